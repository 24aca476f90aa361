//! The snapshot's SQL: the rows of one repo a reader may read (PROTOCOL.md §4) that pass a
//! [`Filter`], as a `WHERE` clause with parameters. Client text never enters the SQL: values and
//! field names travel as parameters (`data #> $n::text[]`), the only identifiers spliced in are
//! the app schema and repo, quoted.
//!
//! Each comparison is guarded by `CASE WHEN jsonb_typeof(…) = '<type>'`, which both gives the
//! filter's "another type is false" rule and keeps a cast from ever seeing a value of the wrong
//! type (`AND` does not fix evaluation order in PostgreSQL; `CASE` does).

use super::filter::{Field, Filter, Op, Predicate, Scalar};
use crate::db::quote_ident;
use crate::permission::{ReadLevel, Reader};
use tokio_postgres::types::ToSql;

pub type Param = Box<dyn ToSql + Sync + Send>;

/// A parameterised selection of readable, filtered rows of one repo.
#[derive(Debug)]
pub struct RowSelection {
    table: String,
    condition: String,
    params: Vec<Param>,
}

impl RowSelection {
    pub fn new(app: &str, repo: &str, level: ReadLevel, reader: &Reader, filter: &Filter) -> Self {
        let mut builder = Builder::default();
        let mut terms = vec![builder.permission(level, reader)];
        for predicate in filter.predicates() {
            terms.push(builder.predicate(predicate));
        }
        RowSelection {
            table: format!("{}.{}", quote_ident(app), quote_ident(repo)),
            condition: terms.join(" AND "),
            params: builder.params,
        }
    }

    /// The schema-qualified, quoted table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// How many rows match, counting at most `limit + 1` of them (never more work than that).
    pub fn count_sql(&self, limit: usize) -> String {
        format!(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {}) AS capped",
            self.table,
            self.condition,
            limit.saturating_add(1)
        )
    }

    /// The matching rows' `id`, `account_id` (text, NULL kept) and `data` (text).
    pub fn rows_sql(&self) -> String {
        format!(
            "SELECT id::text, account_id::text, data::text FROM {} WHERE {}",
            self.table, self.condition
        )
    }

    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

#[derive(Default)]
struct Builder {
    params: Vec<Param>,
}

impl Builder {
    /// Adds a parameter; returns its placeholder with an explicit type, so that PostgreSQL
    /// never has to guess it.
    fn param(&mut self, value: Param, ty: &str) -> String {
        self.params.push(value);
        format!("${}::{ty}", self.params.len())
    }

    fn permission(&mut self, level: ReadLevel, reader: &Reader) -> String {
        if reader.is_root() || level == ReadLevel::Everyone {
            return "TRUE".to_owned();
        }
        let Some(account) = reader.account_id else {
            return "FALSE".to_owned();
        };
        let account = self.param(Box::new(account), "uuid");
        match level {
            ReadLevel::Account => format!("account_id = {account}"),
            _ => {
                let user = self.param(Box::new(reader.user_id), "uuid");
                format!("account_id = {account} AND owner_id = {user}")
            }
        }
    }

    fn predicate(&mut self, p: &Predicate) -> String {
        match &p.field {
            Field::Id => self.text_predicate("id::text", p),
            Field::AccountId => self.text_predicate("COALESCE(account_id::text, '')", p),
            Field::Data(path) => {
                let path = self.param(Box::new(path.clone()), "text[]");
                let value = format!("(data #> {path})");
                self.json_predicate(&value, p)
            }
        }
    }

    /// A row column read as text; the parser allows only string operands here.
    fn text_predicate(&mut self, column: &str, p: &Predicate) -> String {
        let strings: Vec<String> = p
            .values
            .iter()
            .filter_map(|v| match v {
                Scalar::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        if p.op == Op::In {
            let list = self.param(Box::new(strings), "text[]");
            return format!("({column} = ANY({list}))");
        }
        match strings.into_iter().next() {
            Some(s) => {
                let v = self.param(Box::new(s), "text");
                format!("({column} COLLATE \"C\" {} {v})", sql_op(p.op))
            }
            None => "FALSE".to_owned(),
        }
    }

    fn json_predicate(&mut self, value: &str, p: &Predicate) -> String {
        if p.op == Op::In {
            let mut strings = Vec::new();
            let mut numbers = Vec::new();
            let mut bools = Vec::new();
            for v in &p.values {
                match v {
                    Scalar::String(s) => strings.push(s.clone()),
                    Scalar::Number(n) => numbers.push(*n),
                    Scalar::Bool(b) => bools.push(*b),
                }
            }
            let mut any = Vec::new();
            if !strings.is_empty() {
                let list = self.param(Box::new(strings), "text[]");
                any.push(typed(value, "string", "", &format!("= ANY({list})")));
            }
            if !numbers.is_empty() {
                let list = self.param(Box::new(numbers), "float8[]");
                any.push(typed(
                    value,
                    "number",
                    "::float8",
                    &format!("= ANY({list})"),
                ));
            }
            if !bools.is_empty() {
                let list = self.param(Box::new(bools), "boolean[]");
                any.push(typed(
                    value,
                    "boolean",
                    "::boolean",
                    &format!("= ANY({list})"),
                ));
            }
            if any.is_empty() {
                return "FALSE".to_owned();
            }
            return format!("({})", any.join(" OR "));
        }
        let op = sql_op(p.op);
        match p.values.first() {
            Some(Scalar::String(s)) => {
                let v = self.param(Box::new(s.clone()), "text");
                typed(value, "string", " COLLATE \"C\"", &format!("{op} {v}"))
            }
            Some(Scalar::Number(n)) => {
                let v = self.param(Box::new(*n), "float8");
                typed(value, "number", "::float8", &format!("{op} {v}"))
            }
            Some(Scalar::Bool(b)) => {
                let v = self.param(Box::new(*b), "boolean");
                typed(value, "boolean", "::boolean", &format!("{op} {v}"))
            }
            None => "FALSE".to_owned(),
        }
    }
}

/// `value` (a jsonb expression) compared as `json_type` only, NULL (false) otherwise.
fn typed(value: &str, json_type: &str, cast: &str, comparison: &str) -> String {
    format!(
        "(CASE WHEN jsonb_typeof({value}) = '{json_type}' THEN ({value} #>> '{{}}'){cast} {comparison} END)"
    )
}

fn sql_op(op: Op) -> &'static str {
    match op {
        Op::Eq | Op::In => "=",
        Op::Neq => "<>",
        Op::Lt => "<",
        Op::Lte => "<=",
        Op::Gt => ">",
        Op::Gte => ">=",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reader(role: i32) -> Reader {
        Reader::numbered(1, 2, role)
    }

    #[test]
    fn client_text_stays_in_parameters() {
        let filter = Filter::parse(&json!([
            ["status", "eq", "'; DROP TABLE x; --"],
            ["meta.rank", "in", [1, "a", true]],
            ["id", "neq", "z"]
        ]))
        .unwrap();
        let q = RowSelection::new("ap\"p", "t_700_", ReadLevel::Owner, &reader(0), &filter);
        let sql = q.rows_sql();
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(!sql.contains("status") && !sql.contains("rank"), "{sql}");
        assert!(sql.contains("FROM \"ap\"\"p\".\"t_700_\""), "{sql}");
        assert!(sql.contains("account_id = $1::uuid AND owner_id = $2::uuid"));
        assert_eq!(q.params().len(), 2 + 2 + 4 + 1);
        assert!(q.count_sql(10).ends_with("LIMIT 11) AS capped"));
    }

    #[test]
    fn permission_terms() {
        let none = Filter::parse(&json!([])).unwrap();
        let cond = |level, r: &Reader| RowSelection::new("a", "t", level, r, &none).condition;
        assert_eq!(cond(ReadLevel::Everyone, &reader(0)), "TRUE");
        assert_eq!(cond(ReadLevel::Owner, &reader(100)), "TRUE");
        assert_eq!(
            cond(ReadLevel::Account, &reader(0)),
            "account_id = $1::uuid"
        );
        let orphan = Reader {
            account_id: None,
            ..reader(0)
        };
        assert_eq!(cond(ReadLevel::Account, &orphan), "FALSE");
    }
}
