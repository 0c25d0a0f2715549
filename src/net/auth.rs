//! The password check behind `Next::AuthCheck`: the configured `[[users]]` and their
//! SHA-512-crypt hashes. Never logs or keeps a password; the delay after a failure is the
//! connection task's job.

use std::time::Duration;

use crate::config::User;
use crate::smtp::server::Credentials;

/// How long a failed AUTH waits before its 535 (slows password guessing; with
/// `MAX_AUTH_FAILURES` a connection costs a guesser several seconds for three tries).
pub(super) const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(1500);

/// A well-formed hash no password matches, checked for unknown users so that a guesser cannot
/// tell them from known ones by the time the answer takes.
const UNKNOWN_USER_HASH: &str = "$6$unknownuser$/dlZlOUbW9K5b.VKmXRegDgDx32RMD7OUJvbDJSwD8v65\
     gTORPHU/Bx5pxtKc17DLjAjuUvrf6SNJa0puPa.8.";

/// The user name if the credentials match a configured user. An authorization identity other
/// than the user itself is refused (outpost has no proxy users).
pub(super) fn verify(users: &[User], credentials: &Credentials) -> Option<String> {
    let user = users.iter().find(|u| u.name == credentials.username);
    let hash = user.map_or(UNKNOWN_USER_HASH, |u| u.password_hash.as_str());
    let matches = sha_crypt::sha512_check(&credentials.password, hash).is_ok();
    let authzid_ok = credentials.authzid.is_empty() || credentials.authzid == credentials.username;
    match user {
        Some(user) if matches && authzid_ok => Some(user.name.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl passwd -6 -salt Zx9q2mB7 camera-pw`
    const CAMERA: &str = "$6$Zx9q2mB7$7euoUzgiGoP/JG7b1oQ/kumgdF6Rt0IqsCVygrN/0nG5ZBWl2b626DDBnWC\
                          tQEYUs8L4DnHNrO320C/FDxqzL0";
    /// `openssl passwd -6 -salt abc secret`, with `rounds=5000` spelled out (the default).
    const PRINTER: &str =
        "$6$rounds=5000$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1\
                           T..8RadRt2qvUHYRLr/TsVArtr91iR1";

    fn users() -> Vec<User> {
        vec![
            User {
                name: "camera".into(),
                password_hash: CAMERA.into(),
            },
            User {
                name: "printer".into(),
                password_hash: PRINTER.into(),
            },
        ]
    }

    fn creds(authzid: &str, username: &str, password: &str) -> Credentials {
        Credentials {
            authzid: authzid.into(),
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn openssl_passwd_6_hashes_verify() {
        let users = users();
        assert_eq!(
            verify(&users, &creds("", "camera", "camera-pw")).as_deref(),
            Some("camera")
        );
        assert_eq!(
            verify(&users, &creds("printer", "printer", "secret")).as_deref(),
            Some("printer")
        );
    }

    #[test]
    fn wrong_password_unknown_user_or_foreign_authzid_fail() {
        let users = users();
        assert_eq!(verify(&users, &creds("", "camera", "secret")), None);
        assert_eq!(verify(&users, &creds("", "camera", "camera-pw ")), None);
        assert_eq!(verify(&users, &creds("", "nobody", "camera-pw")), None);
        assert_eq!(
            verify(&users, &creds("printer", "camera", "camera-pw")),
            None
        );
        assert_eq!(verify(&[], &creds("", "camera", "camera-pw")), None);
    }

    #[test]
    fn the_unknown_user_hash_is_well_formed() {
        // Else unknown users would answer faster than known ones.
        let error = sha_crypt::sha512_check("x", UNKNOWN_USER_HASH).unwrap_err();
        assert!(format!("{error:?}").contains("HashMismatch"), "{error:?}");
    }
}
