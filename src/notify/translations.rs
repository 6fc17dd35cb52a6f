//! One event's translations at dispatch: each locale its recipients read
//! is rendered once, on first need; recipients without a locale, or whose
//! locale has no templates, read the default and cost nothing more.

use serde_json::Value;

use super::registry::TypeDef;
use super::templates::{Templates, Translated};

/// One event's translations, each rendered once on its first recipient's
/// need, however many recipients read it; the default is `Rendered`.
#[derive(Debug, Default)]
pub struct Translations {
    /// (tag, content), or None where the translation failed to render and
    /// its readers get the default.
    rendered: Vec<(String, Option<Translated>)>,
}

impl Translations {
    /// The translation a recipient reads whose locale is `locale` (the
    /// event's, else the user's): its index, rendered now if first needed;
    /// None for the default. Costs nothing without a locale.
    pub fn pick(
        &mut self,
        templates: &Templates,
        ty: &str,
        def: &TypeDef,
        payload: &Value,
        locale: Option<&str>,
    ) -> Option<usize> {
        let tag = templates.translation(ty, locale?)?;
        if let Some(i) = self.rendered.iter().position(|(t, _)| t == tag) {
            return self.rendered[i].1.is_some().then_some(i);
        }
        let content = match templates.render_translated(ty, def, payload, tag) {
            Ok(content) => Some(content),
            Err(e) => {
                log::warn!(
                    "type {ty}: the {tag} templates do not render ({e}); sent in the default"
                );
                None
            }
        };
        let ok = content.is_some();
        self.rendered.push((tag.to_string(), content));
        ok.then_some(self.rendered.len() - 1)
    }

    /// Translation `i` as `pick` gave it: its tag and content.
    pub fn get(&self, i: Option<usize>) -> Option<(&str, &Translated)> {
        let (tag, content) = self.rendered.get(i?)?;
        Some((tag.as_str(), content.as_ref()?))
    }
}
