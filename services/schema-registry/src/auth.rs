//! Who may use the API: users with a password and a role (`read` or `write`), checked with HTTP
//! basic authentication.
//!
//! Users come from a file of `user:password:role` lines (`#` starts a comment) and/or a setting
//! holding the same entries separated by commas. With no users at all the registry is open, as
//! Confluent's is by default. Passwords are kept as given, compared in constant time, and never
//! printed: every type holding one redacts it in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use subtle::{Choice, ConstantTimeEq};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every request that changes nothing: listings, lookups, compatibility tests.
    Read,
    /// Everything: registering, deleting, setting compatibility levels, and all reads.
    Write,
}

impl Role {
    /// Whether this role may make a request that changes the registry.
    pub fn may_write(self) -> bool {
        self == Role::Write
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            other => Err(format!("unknown role '{other}' (expected read or write)")),
        }
    }
}

/// A password; `Debug` never shows it.
#[derive(Clone)]
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One user of the API.
#[derive(Debug, Clone)]
pub struct User {
    name: String,
    password: Password,
    role: Role,
}

impl User {
    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Parses one `user:password:role` entry. The name ends at the first colon and the role
    /// starts after the last one, so a password may contain colons.
    fn parse(entry: &str) -> Result<User, String> {
        let (name, rest) = entry
            .split_once(':')
            .ok_or("expected user:password:role, found no colon")?;
        let (password, role) = rest
            .rsplit_once(':')
            .ok_or("expected user:password:role, found one colon")?;
        let name = name.trim();
        if name.is_empty() {
            return Err("the user name is empty".to_owned());
        }
        if password.is_empty() {
            return Err(format!("user '{name}' has an empty password"));
        }
        let role = role.parse().map_err(|reason| format!("user '{name}': {reason}"))?;
        Ok(User {
            name: name.to_owned(),
            password: Password(password.to_owned()),
            role,
        })
    }
}

/// Users given inline (`REGISTRY_USERS`): `user:password:role` entries separated by commas.
#[derive(Debug, Clone)]
pub struct UserList(Vec<User>);

impl FromStr for UserList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(index, entry)| User::parse(entry).map_err(|reason| format!("entry {}: {reason}", index + 1)))
            .collect::<Result<_, _>>()
            .map(UserList)
    }
}

/// Why the users could not be loaded. The registry does not start: fix the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The users file could not be read.
    #[error("cannot read the users file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the users file is not a valid entry (the message never holds the password).
    #[error("users file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The same user name is given twice.
    #[error("user '{0}' is defined more than once")]
    Duplicate(String),
}

/// Everyone who may use the API. Empty: the API is open to anyone.
#[derive(Debug, Clone, Default)]
pub struct Users(Vec<User>);

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Basic` header, a malformed one, an unknown user or a wrong password.
    Unauthenticated,
    /// A known user whose role does not allow the request.
    Forbidden,
}

impl Users {
    /// Reads the users file (if given) and adds the inline users (if given).
    pub fn load(file: Option<&Path>, inline: Option<&UserList>) -> Result<Users, UsersError> {
        let mut users = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
                path: path.to_owned(),
                source,
            })?;
            users.extend(parse_file(&text).map_err(|(line, reason)| UsersError::Line {
                path: path.to_owned(),
                line,
                reason,
            })?);
        }
        if let Some(UserList(inline)) = inline {
            users.extend(inline.iter().cloned());
        }
        for (index, user) in users.iter().enumerate() {
            if users[..index].iter().any(|earlier| earlier.name == user.name) {
                return Err(UsersError::Duplicate(user.name.clone()));
            }
        }
        Ok(Users(users))
    }

    /// Whether no user is configured, so that every request is let in.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The configured users (names and roles; passwords stay private).
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.0.iter()
    }

    /// Decides on a request from its `Authorization` header and whether it changes anything.
    /// An open registry lets everything in, whatever the header says.
    pub fn admit(&self, authorization: Option<&[u8]>, writes: bool) -> Result<(), Refusal> {
        if self.is_open() {
            return Ok(());
        }
        let (name, password) = authorization
            .and_then(basic_credentials)
            .ok_or(Refusal::Unauthenticated)?;
        let role = self.authenticate(&name, &password).ok_or(Refusal::Unauthenticated)?;
        if writes && !role.may_write() {
            return Err(Refusal::Forbidden);
        }
        Ok(())
    }

    /// The role of the user with this name and password. Every user is compared, each in
    /// constant time, so the answer takes as long whichever user (if any) matches.
    fn authenticate(&self, name: &str, password: &str) -> Option<Role> {
        let mut found: Option<Role> = None;
        for user in &self.0 {
            let matches: Choice =
                user.name.as_bytes().ct_eq(name.as_bytes()) & user.password.0.as_bytes().ct_eq(password.as_bytes());
            if bool::from(matches) {
                found = Some(user.role);
            }
        }
        found
    }
}

/// Parses a users file: one `user:password:role` per line, blank lines and `#` comments ignored.
/// A failure names the line (from 1) and what is wrong, never the password.
fn parse_file(text: &str) -> Result<Vec<User>, (usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
        .map(|(index, line)| User::parse(line.trim()).map_err(|reason| (index + 1, reason)))
        .collect()
}

/// The user name and password of an `Authorization: Basic <base64 of user:password>` header.
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_info: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_info)).into_bytes()
    }

    fn users() -> Users {
        let text = "# the registry's users\n\nreader:r-secret:read\n  writer:w:se:cret:write  \n";
        Users(parse_file(text).expect("a valid file"))
    }

    #[test]
    fn a_users_file_has_one_user_per_line_and_ignores_comments_and_blank_lines() {
        let users = users();
        let listed: Vec<(&str, Role)> = users.iter().map(|user| (user.name(), user.role())).collect();
        assert_eq!(listed, [("reader", Role::Read), ("writer", Role::Write)]);
    }

    #[test]
    fn a_password_may_contain_colons() {
        assert_eq!(users().authenticate("writer", "w:se:cret"), Some(Role::Write));
    }

    #[test]
    fn a_bad_line_is_reported_by_number_without_its_password() {
        let (line, reason) = parse_file("ok:pw:read\n\nbad:hunter2:admin\n").expect_err("an unknown role");
        assert_eq!(line, 3);
        assert!(reason.contains("admin"), "{reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
        assert!(parse_file("nocolon").is_err());
        assert!(parse_file("one:colon").is_err());
        assert!(parse_file(":pw:read").is_err());
        assert!(parse_file("user::read").is_err());
    }

    #[test]
    fn inline_users_are_comma_separated() {
        let UserList(list) = "a:1:read, b:2:WRITE,".parse().expect("valid entries");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].role(), Role::Write);
        assert!("a:1:read,b:2:owner".parse::<UserList>().is_err());
    }

    #[test]
    fn a_user_defined_twice_is_refused() {
        let inline: UserList = "same:1:read,same:2:write".parse().expect("valid entries");
        assert!(matches!(
            Users::load(None, Some(&inline)),
            Err(UsersError::Duplicate(name)) if name == "same"
        ));
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let inline: UserList = "reader:r-secret:read".parse().expect("valid entries");
        let shown = format!("{inline:?} {:?}", users());
        assert!(!shown.contains("r-secret") && !shown.contains("se:cret"), "{shown}");
        assert!(shown.contains("reader"), "{shown}");
    }

    #[test]
    fn with_no_users_everything_is_let_in() {
        let open = Users::default();
        assert!(open.is_open());
        assert_eq!(open.admit(None, true), Ok(()));
        assert_eq!(open.admit(Some(b"Basic garbage"), true), Ok(()));
    }

    #[test]
    fn a_request_without_good_credentials_is_unauthenticated() {
        let users = users();
        for authorization in [
            None,
            Some(b"Bearer abc".to_vec()),
            Some(b"Basic !!!notbase64".to_vec()),
            Some(header("reader")),
            Some(header("reader:wrong")),
            Some(header("nobody:r-secret")),
            Some(header("reader:r-secret:")),
        ] {
            assert_eq!(
                users.admit(authorization.as_deref(), false),
                Err(Refusal::Unauthenticated),
                "{:?}",
                authorization.map(|h| String::from_utf8_lossy(&h).into_owned())
            );
        }
    }

    #[test]
    fn a_reader_may_read_but_not_write_and_a_writer_may_do_both() {
        let users = users();
        let reader = header("reader:r-secret");
        let writer = header("writer:w:se:cret");
        assert_eq!(users.admit(Some(&reader), false), Ok(()));
        assert_eq!(users.admit(Some(&reader), true), Err(Refusal::Forbidden));
        assert_eq!(users.admit(Some(&writer), false), Ok(()));
        assert_eq!(users.admit(Some(&writer), true), Ok(()));
        // The scheme is case-insensitive, as HTTP's are.
        let lower = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("reader:r-secret")
        );
        assert_eq!(users.admit(Some(lower.as_bytes()), false), Ok(()));
    }
}
