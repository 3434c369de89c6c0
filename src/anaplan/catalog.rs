//! The Anaplan user-activity event codes (`USR-*`) known to the binary.
//!
//! The table is Anaplan's own list, embedded as `user-activity-events.csv` (columns `code`,
//! `message`, `object_id_refers_to`, `scope_note`) and parsed once on first use. Each row
//! becomes an [`EventInfo`]:
//!
//! - `name` is the `message` column: the text Anaplan puts in an event's `message`.
//! - `object` is derived from `object_id_refers_to`: the words before any parenthesis.
//!   `user`, `user login` and `user logout` mean the event's `objectId` is a user id
//!   ([`ObjectKind::User`]); `model` a model id; `process` a process id. The whole column
//!   stays available as `object_detail`.
//! - `category` comes from [`CATEGORIES`], one explicit entry per code, chosen by this rule:
//!   1. **authentication**: signing in and out, session ends, and credential changes
//!      (login/logout success and failure, session time-out, password change).
//!   2. **account lifecycle**: the user account itself: created, activated, enabled,
//!      disabled, updated, deleted, and changes of its profile fields (email, names).
//!   3. **access**: what a user may reach or did reach: tenant and workspace membership,
//!      visitors, model role and workspace-administrator assignments, Exception access
//!      (basic auth allowed despite SSO), and opening a model or dashboard (success or
//!      failure).
//!   4. **data movement**: data leaving or entering a model: exports and imports.
//!   5. **administration**: everything else a user does to a model: actions and processes
//!      run, list and item changes, branch copies, optimizer runs.
//!
//!   The CSV needs no other category. A unit test checks that every CSV code has exactly one
//!   entry, so a row added to the CSV without a category fails the build's tests.
//!
//! Codes outside this table (other families such as `AUTHZ-*`, `CONN-*`, or codes Anaplan adds
//! later) are not errors: [`lookup`] returns `None` and the source passes the event through,
//! marked unknown.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

/// The CSV as shipped in the repository (see the module documentation).
const CSV: &str = include_str!("user-activity-events.csv");

/// The header the parser expects, so a reordered file cannot be misread silently.
const HEADER: &str = "code,message,object_id_refers_to,scope_note";

/// What kind of activity an event code records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Signing in and out, sessions, credentials.
    Authentication,
    /// The user account itself: creation, state changes, profile, deletion.
    AccountLifecycle,
    /// Membership, roles, access grants, and access to models and dashboards.
    Access,
    /// Actions, processes and structural changes inside models.
    Administration,
    /// Exports and imports.
    DataMovement,
}

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 5] = [
        Category::Authentication,
        Category::AccountLifecycle,
        Category::Access,
        Category::Administration,
        Category::DataMovement,
    ];

    /// The snake_case name used in the output envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Authentication => "authentication",
            Category::AccountLifecycle => "account_lifecycle",
            Category::Access => "access",
            Category::Administration => "administration",
            Category::DataMovement => "data_movement",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event's `objectId` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A user id (32 hex characters, or `INTERNAL_*`): enrich it like `userId`.
    User,
    /// A model id.
    Model,
    /// A process id.
    Process,
}

impl ObjectKind {
    /// The snake_case name used in the output envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::User => "user",
            ObjectKind::Model => "model",
            ObjectKind::Process => "process",
        }
    }

    /// Reads the `object_id_refers_to` column: the words before any parenthesis decide.
    fn from_column(column: &str) -> Option<Self> {
        let head = column.split('(').next().unwrap_or_default().trim();
        match head {
            "user" | "user login" | "user logout" => Some(ObjectKind::User),
            "model" => Some(ObjectKind::Model),
            "process" => Some(ObjectKind::Process),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One known event code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo {
    /// The `eventTypeId`, e.g. `USR-8`.
    pub code: &'static str,
    /// Anaplan's description, e.g. `User login success`.
    pub name: &'static str,
    /// What the event's `objectId` refers to.
    pub object: ObjectKind,
    /// The activity class (see the module documentation for the rule).
    pub category: Category,
    /// The `object_id_refers_to` column as written, e.g. `user (the created user)`.
    pub object_detail: &'static str,
    /// Anaplan's scope note, often empty.
    pub note: &'static str,
}

impl EventInfo {
    /// True for the codes that record a failed attempt (their name says "failure"). Anaplan
    /// also sends `success: false` on those; prefer the event's own `success` when present.
    pub fn is_failure(&self) -> bool {
        self.name.to_ascii_lowercase().contains("failure")
    }
}

/// The category of every CSV code (see the module documentation for the rule).
pub const CATEGORIES: &[(&str, Category)] = {
    use Category::{
        Access as AC, AccountLifecycle as AL, Administration as AD, Authentication as AU,
        DataMovement as DM,
    };
    &[
        ("USR-1", AL),
        ("USR-2", AL),
        ("USR-3", AL),
        ("USR-4", AL),
        ("USR-5", AL),
        ("USR-8", AU),
        ("USR-9", AU),
        ("USR-10", AU),
        ("USR-11", AU),
        ("USR-12", AU),
        ("USR-13", AC),
        ("USR-14", AC),
        ("USR-15", AC),
        ("USR-16", AC),
        ("USR-17", AC),
        ("USR-18", AC),
        ("USR-19", AC),
        ("USR-20", AD),
        ("USR-21", AC),
        ("USR-22", AC),
        ("USR-23", AC),
        ("USR-24", AC),
        ("USR-25", AC),
        ("USR-26", AL),
        ("USR-27", AL),
        ("USR-28", AL),
        ("USR-29", AL),
        ("USR-30", AC),
        ("USR-31", AC),
        ("USR-32", DM),
        ("USR-33", AD),
        ("USR-34", AD),
        ("USR-35", AD),
        ("USR-36", DM),
        ("USR-38", AD),
        ("USR-39", DM),
        ("USR-40", AD),
        ("USR-41", AD),
        ("USR-42", DM),
        ("USR-50", DM),
        ("USR-51", DM),
        ("USR-52", DM),
        ("USR-53", DM),
        ("USR-54", DM),
        ("USR-55", AU),
        ("USR-57", AC),
        ("USR-58", AC),
    ]
};

/// Why the embedded CSV could not be read (only reachable if the file is edited badly; the
/// unit tests parse it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParseError {
    line: usize,
    problem: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user-activity-events.csv line {}: {}",
            self.line, self.problem
        )
    }
}

/// Splits one CSV line into fields. Quoted fields may contain commas; a doubled quote inside a
/// quoted field is not supported (the file has none), so fields can borrow from the input.
fn split_line(line: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').ok_or("unterminated quoted field")?;
            fields.push(&quoted[..end]);
            rest = &quoted[end + 1..];
            if rest.starts_with('"') {
                return Err("doubled quotes are not supported".into());
            }
            match rest.strip_prefix(',') {
                Some(next) => rest = next,
                None if rest.is_empty() => return Ok(fields),
                None => return Err("text after a closing quote".into()),
            }
        } else {
            match rest.split_once(',') {
                Some((field, next)) => {
                    fields.push(field);
                    rest = next;
                }
                None => {
                    fields.push(rest);
                    return Ok(fields);
                }
            }
        }
    }
}

/// Parses a catalog CSV (header line first) into event infos.
fn parse(csv: &'static str) -> Result<Vec<EventInfo>, ParseError> {
    let mut lines = csv.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim_end() == HEADER => {}
        _ => {
            return Err(ParseError {
                line: 1,
                problem: format!("header must be {HEADER:?}"),
            })
        }
    }
    let categories: HashMap<&str, Category> = CATEGORIES.iter().copied().collect();
    let mut infos: Vec<EventInfo> = Vec::new();
    for (index, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let error = |problem: String| ParseError {
            line: index + 1,
            problem,
        };
        let fields = split_line(line).map_err(|p| error(p.to_string()))?;
        let [code, name, object_detail, note] = fields[..] else {
            return Err(error(format!("expected 4 fields, found {}", fields.len())));
        };
        if code.is_empty() || name.is_empty() {
            return Err(error("empty code or message".into()));
        }
        if infos.iter().any(|info| info.code == code) {
            return Err(error(format!("duplicate code {code}")));
        }
        let object = ObjectKind::from_column(object_detail)
            .ok_or_else(|| error(format!("unknown object kind {object_detail:?}")))?;
        let category = *categories
            .get(code)
            .ok_or_else(|| error(format!("{code} has no entry in CATEGORIES")))?;
        infos.push(EventInfo {
            code,
            name,
            object,
            category,
            object_detail,
            note,
        });
    }
    Ok(infos)
}

static CATALOG: LazyLock<Vec<EventInfo>> =
    LazyLock::new(|| parse(CSV).unwrap_or_else(|error| panic!("{error}")));

static BY_CODE: LazyLock<HashMap<&'static str, usize>> = LazyLock::new(|| {
    CATALOG
        .iter()
        .enumerate()
        .map(|(index, info)| (info.code, index))
        .collect()
});

/// The known event with this exact code (case-sensitive, as Anaplan sends it), or `None`.
pub fn lookup(code: &str) -> Option<&'static EventInfo> {
    BY_CODE.get(code).map(|&index| &CATALOG[index])
}

/// Every known event, in CSV order.
pub fn all() -> &'static [EventInfo] {
    &CATALOG
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data rows of the embedded CSV, counted independently of the parser.
    fn csv_rows() -> usize {
        CSV.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
    }

    #[test]
    fn every_row_parses_and_resolves() {
        let parsed = parse(CSV).unwrap();
        assert_eq!(parsed.len(), csv_rows());
        assert_eq!(all().len(), csv_rows());
        assert_eq!(all().len(), 47);
        for line in CSV.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let code = line.split(',').next().unwrap();
            let info = lookup(code).unwrap_or_else(|| panic!("{code} does not resolve"));
            assert_eq!(info.code, code);
            assert!(line.starts_with(&format!("{code},")));
        }
        assert_eq!(all().first().unwrap().code, "USR-1");
        assert_eq!(all().last().unwrap().code, "USR-58");
    }

    #[test]
    fn categories_cover_the_csv_exactly() {
        assert_eq!(CATEGORIES.len(), all().len());
        for (code, category) in CATEGORIES {
            assert_eq!(lookup(code).map(|i| i.category), Some(*category), "{code}");
        }
        for category in Category::ALL {
            assert!(
                all().iter().any(|i| i.category == category),
                "{category} is unused"
            );
        }
    }

    #[test]
    fn spot_checks() {
        let category = |code| lookup(code).unwrap().category;
        assert_eq!(category("USR-8"), Category::Authentication); // login success
        assert_eq!(category("USR-9"), Category::Authentication); // login failure
        assert_eq!(category("USR-12"), Category::Authentication); // session time-out
        assert_eq!(category("USR-55"), Category::Authentication); // password change
        assert_eq!(category("USR-1"), Category::AccountLifecycle); // created
        assert_eq!(category("USR-29"), Category::AccountLifecycle); // deleted
        assert_eq!(category("USR-26"), Category::AccountLifecycle); // email updated
        assert_eq!(category("USR-23"), Category::Access); // model role assigned
        assert_eq!(category("USR-25"), Category::Access); // workspace admin role
        assert_eq!(category("USR-15"), Category::Access); // assigned to tenant
        assert_eq!(category("USR-57"), Category::Access); // Exception access
        assert_eq!(category("USR-32"), Category::DataMovement); // export
        assert_eq!(category("USR-36"), Category::DataMovement); // export from action
        assert_eq!(category("USR-52"), Category::DataMovement); // import
        assert_eq!(category("USR-41"), Category::Administration); // process run
        assert_eq!(Category::DataMovement.as_str(), "data_movement");
        assert_eq!(Category::AccountLifecycle.to_string(), "account_lifecycle");

        let login = lookup("USR-8").unwrap();
        assert_eq!(login.name, "User login success");
        assert_eq!(login.object, ObjectKind::User);
        assert_eq!(login.object_detail, "user login");
        assert!(!login.is_failure());
        assert!(lookup("USR-9").unwrap().is_failure());
        assert!(lookup("USR-14").unwrap().is_failure());
        // A quoted message with a comma, and a quoted note.
        let model_access = lookup("USR-13").unwrap();
        assert_eq!(model_access.name, "User access to model, success");
        assert_eq!(model_access.object, ObjectKind::Model);
        assert!(model_access.note.ends_with("ipAddress shows NA"));
        assert_eq!(lookup("USR-41").unwrap().object, ObjectKind::Process);
        assert_eq!(
            lookup("USR-1").unwrap().object_detail,
            "user (the created user)"
        );
    }

    #[test]
    fn unknown_codes_are_none() {
        for code in [
            "USR-6", "USR-37", "USR-99", "usr-8", "AUTHZ-3", "", "USR-8 ",
        ] {
            assert_eq!(lookup(code), None, "{code:?}");
        }
    }

    #[test]
    fn the_parser_rejects_bad_files() {
        let bad = |csv: &'static str| parse(csv).unwrap_err().problem;
        assert!(bad("code,name\nUSR-1,x,user,\n").starts_with("header"));
        assert!(bad(concat!(
            "code,message,object_id_refers_to,scope_note\n",
            "USR-1,x,user\n"
        ))
        .starts_with("expected 4 fields"));
        assert!(bad(concat!(
            "code,message,object_id_refers_to,scope_note\n",
            "USR-1,x,dashboard,\n"
        ))
        .starts_with("unknown object kind"));
        assert!(bad(concat!(
            "code,message,object_id_refers_to,scope_note\n",
            "USR-99,x,user,\n"
        ))
        .contains("no entry in CATEGORIES"));
        assert!(bad(concat!(
            "code,message,object_id_refers_to,scope_note\n",
            "USR-1,\"x,user,\n"
        ))
        .starts_with("unterminated"));
        assert_eq!(
            split_line("a,\"b, c\",,\"d\"").unwrap(),
            ["a", "b, c", "", "d"]
        );
    }
}
