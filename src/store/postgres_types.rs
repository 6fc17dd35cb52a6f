//! herald's values in PostgreSQL's types. herald's `Value`s are SQLite's
//! few storage classes; here an argument is bound to whatever type
//! PostgreSQL inferred for its placeholder, and a column of any type herald
//! uses is read back as the `Value` SQLite would have given.

use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use super::error::{StoreError, StoreResult};
use super::value::{Arg, Value};

/// Column `idx` of `row` as herald's `Value`: booleans read as 0 and 1 and
/// NUMERIC (what SUM of integers gives) as an integer when it is whole, as
/// SQLite would give them.
pub(super) fn value(row: &postgres::Row, idx: usize) -> StoreResult<Value<'_>> {
    let Some(column) = row.columns().get(idx) else {
        return Err(StoreError::Database(format!("no column {idx}")));
    };
    let ty = column.type_().clone();
    fn get<'r, T: FromSql<'r>>(row: &'r postgres::Row, idx: usize) -> StoreResult<Option<T>> {
        Ok(row.try_get::<_, Option<T>>(idx)?)
    }
    let value = match ty {
        Type::INT8 => get::<i64>(row, idx)?.map(Value::Int),
        Type::INT4 => get::<i32>(row, idx)?.map(|i| Value::Int(i.into())),
        Type::INT2 => get::<i16>(row, idx)?.map(|i| Value::Int(i.into())),
        Type::BOOL => get::<bool>(row, idx)?.map(|b| Value::Int(b.into())),
        Type::FLOAT8 => get::<f64>(row, idx)?.map(Value::Real),
        Type::FLOAT4 => get::<f32>(row, idx)?.map(|x| Value::Real(x.into())),
        Type::NUMERIC => get::<Numeric>(row, idx)?.map(|n| n.0),
        Type::BYTEA => get::<&[u8]>(row, idx)?.map(Value::Blob),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            get::<&str>(row, idx)?.map(Value::Text)
        }
        other => {
            return Err(StoreError::Database(format!(
                "column {idx} has type {other}, which herald does not read"
            )))
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

pub(super) fn values<'a>(args: &'a [&'a dyn Arg]) -> Vec<Bound<'a>> {
    args.iter().map(|a| Bound(a.value())).collect()
}

pub(super) fn params<'a>(values: &'a [Bound<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// An argument bound to whatever type PostgreSQL inferred for its
/// placeholder: herald's values are SQLite's few storage classes, and an
/// integer may meet a BIGINT, an INTEGER or a boolean column.
#[derive(Debug)]
pub(super) struct Bound<'a>(Value<'a>);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for Bound<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let mismatch =
            || -> BoxError { format!("cannot bind {:?} to a {ty} parameter", self.0).into() };
        match (self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (i as f64).to_sql(ty, out),
            (Value::Real(x), &Type::FLOAT8) => x.to_sql(ty, out),
            (Value::Real(x), &Type::FLOAT4) => (x as f32).to_sql(ty, out),
            (Value::Int(i), t) if is_text(t) => i.to_string().as_str().to_sql(ty, out),
            (Value::Real(x), t) if is_text(t) => x.to_string().as_str().to_sql(ty, out),
            (Value::Text(s), t) if is_text(t) => s.to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

/// A NUMERIC column: whole values as integers, others as reals.
struct Numeric(Value<'static>);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Numeric, BoxError> {
        // PostgreSQL's binary NUMERIC: digit count, weight (of the first
        // digit, in powers of 10,000), sign, display scale, then base-10,000
        // digits.
        let word = |i: usize| -> Result<i16, BoxError> {
            let b = raw.get(i * 2..i * 2 + 2).ok_or("short NUMERIC")?;
            Ok(i16::from_be_bytes([b[0], b[1]]))
        };
        let (ndigits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
        if sign == 0xC000 {
            return Ok(Numeric(Value::Real(f64::NAN)));
        }
        let negative = sign == 0x4000;
        let mut whole: Option<i128> = Some(0);
        let mut real = 0f64;
        for i in 0..ndigits.max(0) as usize {
            let digit = i128::from(word(4 + i)?);
            let power = i32::from(weight) - i as i32;
            real += digit as f64 * 10_000f64.powi(power);
            whole = match (whole, u32::try_from(power)) {
                (Some(w), Ok(p)) => 10_000i128
                    .checked_pow(p)
                    .and_then(|scale| w.checked_add(digit.checked_mul(scale)?)),
                // A fractional digit: zero keeps it whole.
                (Some(w), Err(_)) if digit == 0 => Some(w),
                _ => None,
            };
        }
        let whole = whole
            .map(|w| if negative { -w } else { w })
            .and_then(|w| i64::try_from(w).ok());
        Ok(Numeric(match whole {
            Some(w) => Value::Int(w),
            None => Value::Real(if negative { -real } else { real }),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_read_as_integers_when_whole() {
        let numeric = |words: &[i16]| {
            let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            Numeric::from_sql(&Type::NUMERIC, &raw).unwrap().0
        };
        // 123456789 = 1|2345|6789, weight 2.
        assert_eq!(
            numeric(&[3, 2, 0, 0, 1, 2345, 6789]),
            Value::Int(123_456_789)
        );
        assert_eq!(numeric(&[1, 0, 0x4000, 0, 7]), Value::Int(-7));
        assert_eq!(numeric(&[0, 0, 0, 0]), Value::Int(0));
        // 1.5 = 1 | 5000, weight 0, scale 1.
        assert_eq!(numeric(&[2, 0, 0, 1, 1, 5000]), Value::Real(1.5));
    }
}
