//! The plan catalog (`data/catalog.json`, embedded): which herald plan each
//! Stripe price id stands for. An unknown price is not an error; the webhook
//! keeps the org's plan and logs a warning.

use std::collections::HashMap;

use serde::Deserialize;

const EMBEDDED: &str = include_str!("../../data/catalog.json");

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Catalog {
    prices: HashMap<String, String>,
}

impl Catalog {
    pub fn embedded() -> Result<Catalog, String> {
        Catalog::parse(EMBEDDED)
    }

    pub fn parse(text: &str) -> Result<Catalog, String> {
        serde_json::from_str(text).map_err(|e| format!("data/catalog.json: {e}"))
    }

    pub fn plan_for(&self, price_id: &str) -> Option<&str> {
        self.prices.get(price_id).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_parses_and_maps_prices() {
        let c = Catalog::embedded().unwrap();
        assert_eq!(c.plan_for("price_pro_monthly"), Some("pro"));
        assert_eq!(c.plan_for("price_nope"), None);
    }
}
