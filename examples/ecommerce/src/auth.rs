//! Who is calling: HS256 JSON Web Tokens, issued for development and
//! verified on every request.
//!
//! A token carries the claims of a Cognito ID token that the storefront
//! needs: `sub` (the user), `custom:tenant` (the shop), `custom:roles` (a JSON
//! array of strings, absent when empty), `exp` and `iat` (seconds since the
//! Unix epoch). [`Auth::verify`] checks the signature and the expiry and builds
//! the [`InvocationContext`] from the verified claims only: the tenant of every
//! request comes from here, never from a body, a path or another header.
//!
//! ```
//! use std::time::Duration;
//! use ecommerce::auth::Auth;
//!
//! let auth = Auth::try_new(b"a secret of the deployment, 32 bytes or more").unwrap();
//! let token = auth.token("shop-a", "user-1", &["staff"], Duration::from_secs(3600));
//! let ctx = auth.verify(&token).unwrap();
//! assert_eq!((ctx.tenant_code.as_str(), ctx.user_id.as_str()), ("shop-a", "user-1"));
//! assert_eq!(ctx.roles, ["staff"]);
//! assert!(Auth::new(b"another secret of the deployment, 32+").verify(&token).is_err());
//! // A short secret is refused.
//! assert!(Auth::try_new(b"short").is_err());
//! ```
//!
//! Besides the signature and the expiry, [`Auth::verify`] bounds the token's
//! lifetime ([`MAX_TOKEN_LIFETIME_SECS`]: `exp - iat`, and `exp - now` when
//! there is no `iat`) and refuses a token issued (`iat`) or valid from
//! (`nbf`) more than [`CLOCK_SKEW_SECS`] in the future.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::InvocationContext;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The environment variable holding the signing secret.
pub const SECRET_ENV: &str = "ECOMMERCE_JWT_SECRET";

/// The secret used when [`SECRET_ENV`] is not set: for development only.
pub const DEVELOPMENT_SECRET: &str = "ecommerce-development-secret-do-not-use-in-production";

/// Seconds a token may be used after its `exp`, for clock skew.
pub const LEEWAY_SECS: u64 = 0;

/// The longest lifetime of a token (`exp - iat`): 24 hours.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// How far in the future a token's `iat` or `nbf` may be, for clock skew
/// between the issuer and this server: 60 seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// The shortest signing secret: 32 bytes (256 bits, HS256's key size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a secret cannot sign, or cannot serve where it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_BYTES`].
    #[error("the signing secret has {0} bytes; it needs at least {MIN_SECRET_BYTES}")]
    TooShort(usize),
    /// The published development secret, on an address other machines can reach.
    #[error(
        "refusing to serve on {0} with the development secret (anyone can forge its tokens): \
         set {SECRET_ENV} to a secret of at least {MIN_SECRET_BYTES} bytes"
    )]
    Development(String),
}

/// Why a token was refused. Every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer <token>` header.
    #[error("missing bearer token")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token lives longer than [`MAX_TOKEN_LIFETIME_SECS`].
    #[error("the token lives longer than {MAX_TOKEN_LIFETIME_SECS} s")]
    TooLong,
    /// The token's `iat` or `nbf` is in the future (beyond [`CLOCK_SKEW_SECS`]).
    #[error("the token is not valid yet ({0} is in the future)")]
    NotYetValid(&'static str),
    /// A required claim is missing or empty.
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    /// Malformed, badly signed, of another algorithm, or with claims of the
    /// wrong type.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The claims of a storefront token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(rename = "custom:tenant", default)]
    tenant: String,
    #[serde(rename = "custom:roles", default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    // Required: checked by the validation, which reports it missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    development: bool,
}

/// Issues and verifies the storefront's tokens (HS256, one shared secret).
#[derive(Clone)]
pub struct Auth {
    keys: Arc<Keys>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Signs and verifies with `secret`, of at least [`MIN_SECRET_BYTES`].
    pub fn try_new(secret: &[u8]) -> Result<Auth, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.len()));
        }
        Ok(Self::with_secret(secret, false))
    }

    /// [`Auth::try_new`], for secrets known to be long enough (tests,
    /// benchmarks).
    ///
    /// # Panics
    ///
    /// When `secret` is shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Auth {
        match Self::try_new(secret) {
            Ok(auth) => auth,
            Err(e) => panic!("{e}"),
        }
    }

    fn with_secret(secret: &[u8], development: bool) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        // `nbf` is checked by `verify`, with the clock skew of `iat`.
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            keys: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
                development,
            }),
        }
    }

    /// The secret of [`SECRET_ENV`] (at least [`MIN_SECRET_BYTES`]); without
    /// it (or when it is empty), the development secret, with a warning.
    pub fn from_env() -> Result<Auth, SecretError> {
        match std::env::var(SECRET_ENV) {
            Ok(secret) if !secret.is_empty() => Auth::try_new(secret.as_bytes()),
            _ => {
                tracing::warn!(
                    "{SECRET_ENV} is not set: using the development secret; anyone can forge tokens"
                );
                Ok(Auth::development())
            }
        }
    }

    /// Signs and verifies with the published [`DEVELOPMENT_SECRET`].
    pub fn development() -> Auth {
        Self::with_secret(DEVELOPMENT_SECRET.as_bytes(), true)
    }

    /// Whether this is the development secret.
    pub fn is_development(&self) -> bool {
        self.keys.development
    }

    /// Whether a server may listen on `addr` with this secret: the
    /// development secret only on a loopback address, and never for a
    /// deployment on AWS (`aws`).
    pub fn may_serve(&self, addr: &std::net::SocketAddr, aws: bool) -> Result<(), SecretError> {
        if self.is_development() && (aws || !addr.ip().is_loopback()) {
            let place = if aws {
                format!("{addr} with --aws")
            } else {
                addr.to_string()
            };
            return Err(SecretError::Development(place));
        }
        Ok(())
    }

    /// A token for `user` of `tenant` with `roles`, valid for `ttl` (which
    /// [`Auth::verify`] refuses above [`MAX_TOKEN_LIFETIME_SECS`]).
    pub fn token(&self, tenant: &str, user: &str, roles: &[&str], ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.to_owned(),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: Some(now.saturating_add(ttl.as_secs())),
            iat: Some(now),
            nbf: None,
        };
        // HMAC accepts keys of any length and the claims are strings and
        // numbers, so signing cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.keys.encoding)
            .expect("signing plain claims with HS256 cannot fail")
    }

    /// Verifies `token` (signature, algorithm, expiry) and builds the caller's
    /// context from its claims: tenant `custom:tenant`, user `sub`, roles
    /// `custom:roles`.
    pub fn verify(&self, token: &str) -> Result<InvocationContext, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.keys.decoding, &self.keys.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingClaim("exp"),
                ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => AuthError::MissingClaim("sub"),
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let now = jsonwebtoken::get_current_timestamp();
        let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
        for (name, time) in [("iat", claims.iat), ("nbf", claims.nbf)] {
            if time.is_some_and(|t| t > now.saturating_add(CLOCK_SKEW_SECS)) {
                return Err(AuthError::NotYetValid(name));
            }
        }
        let lifetime = exp.saturating_sub(claims.iat.unwrap_or(now));
        if lifetime > MAX_TOKEN_LIFETIME_SECS
            || exp.saturating_sub(now) > MAX_TOKEN_LIFETIME_SECS + CLOCK_SKEW_SECS
        {
            return Err(AuthError::TooLong);
        }
        if claims.sub.trim().is_empty() {
            return Err(AuthError::MissingClaim("sub"));
        }
        if claims.tenant.trim().is_empty() {
            return Err(AuthError::MissingClaim("custom:tenant"));
        }
        // A tenant code becomes the last part of a partition key.
        if claims.tenant.contains(['#', '@']) || claims.tenant.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "custom:tenant is not a tenant code".to_owned(),
            ));
        }
        Ok(InvocationContext::new(claims.tenant, claims.sub).with_roles(claims.roles))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";

    fn sign(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_token_round_trips() {
        let auth = Auth::new(SECRET);
        let token = auth.token("shop-a", "u-1", &["staff", "admin"], Duration::from_secs(60));
        let ctx = auth.verify(&token).unwrap();
        assert_eq!(ctx.tenant_code, "shop-a");
        assert_eq!(ctx.user_id, "u-1");
        assert_eq!(ctx.roles, ["staff", "admin"]);
    }

    #[test]
    fn the_claims_are_as_documented() {
        let auth = Auth::new(SECRET);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        let token = auth.token("shop-a", "u-1", &[], Duration::from_secs(60));
        let claims =
            jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_secret(SECRET), &validation)
                .unwrap()
                .claims;
        assert_eq!(claims["sub"], "u-1");
        assert_eq!(claims["custom:tenant"], "shop-a");
        assert!(claims.get("custom:roles").is_none(), "no roles: no claim");
        let (exp, iat) = (claims["exp"].as_u64().unwrap(), claims["iat"].as_u64().unwrap());
        assert_eq!(exp - iat, 60);
        let token = auth.token("shop-a", "u-1", &["r"], Duration::from_secs(60));
        let claims =
            jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_secret(SECRET), &validation)
                .unwrap()
                .claims;
        assert_eq!(claims["custom:roles"], json!(["r"]));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Auth::new(SECRET);
        let good = json!({ "sub": "u", "custom:tenant": "shop-a", "exp": now() + 60 });
        assert!(auth.verify(&sign(good.clone(), Algorithm::HS256, SECRET)).is_ok());

        // Another key, another algorithm, garbage, nothing.
        assert!(matches!(
            auth.verify(&sign(
                good.clone(),
                Algorithm::HS256,
                b"another-secret-of-at-least-32-bytes"
            )),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.verify(&sign(good.clone(), Algorithm::HS384, SECRET)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(auth.verify("not.a.token"), Err(AuthError::Invalid(_))));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));

        // alg "none": header {"alg":"none"} with the claims and no signature.
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
            eyJzdWIiOiJ1IiwiY3VzdG9tOnRlbmFudCI6InNob3AtYSIsImV4cCI6NDEwMjQ0NDgwMH0.";
        assert!(matches!(auth.verify(unsigned), Err(AuthError::Invalid(_))));

        // Expired, without exp, with exp of the wrong type.
        let expired = json!({ "sub": "u", "custom:tenant": "shop-a", "exp": now() - 10 });
        assert_eq!(
            auth.verify(&sign(expired, Algorithm::HS256, SECRET)),
            Err(AuthError::Expired)
        );
        let no_exp = json!({ "sub": "u", "custom:tenant": "shop-a" });
        assert_eq!(
            auth.verify(&sign(no_exp, Algorithm::HS256, SECRET)),
            Err(AuthError::MissingClaim("exp"))
        );
        let text_exp = json!({ "sub": "u", "custom:tenant": "shop-a", "exp": "tomorrow" });
        assert!(auth.verify(&sign(text_exp, Algorithm::HS256, SECRET)).is_err());

        // Missing or empty tenant or user.
        for (claims, missing) in [
            (json!({ "sub": "u", "exp": now() + 60 }), "custom:tenant"),
            (
                json!({ "sub": "u", "custom:tenant": "", "exp": now() + 60 }),
                "custom:tenant",
            ),
            (json!({ "custom:tenant": "shop-a", "exp": now() + 60 }), "sub"),
            (
                json!({ "sub": " ", "custom:tenant": "shop-a", "exp": now() + 60 }),
                "sub",
            ),
        ] {
            assert_eq!(
                auth.verify(&sign(claims, Algorithm::HS256, SECRET)),
                Err(AuthError::MissingClaim(missing))
            );
        }

        // A tenant that would smuggle a key part; roles of the wrong type.
        let smuggled = json!({ "sub": "u", "custom:tenant": "shop-a#shop-b", "exp": now() + 60 });
        assert!(auth.verify(&sign(smuggled, Algorithm::HS256, SECRET)).is_err());
        let roles =
            json!({ "sub": "u", "custom:tenant": "shop-a", "custom:roles": "admin", "exp": now() + 60 });
        assert!(auth.verify(&sign(roles, Algorithm::HS256, SECRET)).is_err());
    }

    #[test]
    fn the_context_comes_from_the_claims_only() {
        let auth = Auth::new(SECRET);
        let claims = json!({
            "sub": "u", "custom:tenant": "shop-a", "custom:roles": ["staff"],
            "tenantCode": "shop-b", "exp": now() + 60
        });
        let ctx = auth.verify(&sign(claims, Algorithm::HS256, SECRET)).unwrap();
        assert_eq!(
            (ctx.tenant_code.as_str(), ctx.roles.as_slice()),
            ("shop-a", &["staff".to_owned()][..])
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", Auth::new(b"very-secret-very-secret-very-secret")).contains("very-secret"));
    }

    #[test]
    fn lifetimes_and_times_are_bounded() {
        let auth = Auth::new(SECRET);
        let t = now();
        let verify = |claims: serde_json::Value| auth.verify(&sign(claims, Algorithm::HS256, SECRET));
        let base = |exp: u64| json!({ "sub": "u", "custom:tenant": "shop-a", "exp": exp });
        let with = |exp: u64, claim: &str, value: u64| {
            let mut claims = base(exp);
            claims[claim] = json!(value);
            claims
        };
        let day = MAX_TOKEN_LIFETIME_SECS;
        // 24 h exactly is fine, with or without iat.
        assert!(verify(with(t + day, "iat", t)).is_ok());
        assert!(verify(base(t + day)).is_ok());
        assert!(verify(with(t + 60, "iat", t - 3600)).is_ok());
        // Longer is refused: exp never ending, exp - iat over 24 h, no iat and exp too far.
        assert_eq!(verify(base(u64::MAX)), Err(AuthError::TooLong));
        assert_eq!(verify(with(u64::MAX, "iat", t)), Err(AuthError::TooLong));
        assert_eq!(verify(with(t + day + 1, "iat", t)), Err(AuthError::TooLong));
        assert_eq!(verify(with(t + 60, "iat", t - day)), Err(AuthError::TooLong));
        assert_eq!(
            verify(base(t + day + CLOCK_SKEW_SECS + 10)),
            Err(AuthError::TooLong)
        );
        // iat or nbf in the future: within the skew fine, beyond refused.
        assert!(verify(with(t + 3600, "iat", t + 30)).is_ok());
        assert!(verify(with(t + 3600, "nbf", t + 30)).is_ok());
        let year = 365 * day;
        assert_eq!(
            verify(with(t + year + 60, "iat", t + year)),
            Err(AuthError::NotYetValid("iat"))
        );
        assert_eq!(
            verify(with(t + 3600, "iat", t + CLOCK_SKEW_SECS + 5)),
            Err(AuthError::NotYetValid("iat"))
        );
        assert_eq!(
            verify(with(t + 3600, "nbf", t + CLOCK_SKEW_SECS + 5)),
            Err(AuthError::NotYetValid("nbf"))
        );
    }

    #[test]
    fn secrets_are_at_least_32_bytes() {
        assert_eq!(Auth::try_new(b"x").err(), Some(SecretError::TooShort(1)));
        assert_eq!(Auth::try_new(&[7; 31]).err(), Some(SecretError::TooShort(31)));
        assert_eq!(Auth::try_new(b"").err(), Some(SecretError::TooShort(0)));
        assert!(Auth::try_new(&[7; 32]).is_ok());
        assert!(std::panic::catch_unwind(|| Auth::new(b"short")).is_err());
    }

    #[test]
    fn the_development_secret_serves_on_loopback_only() {
        let dev = Auth::development();
        assert!(dev.is_development());
        for ok in ["127.0.0.1:3000", "[::1]:3000", "127.0.0.2:80"] {
            assert_eq!(dev.may_serve(&ok.parse().unwrap(), false), Ok(()), "{ok}");
        }
        for bad in ["0.0.0.0:3000", "[::]:3000", "10.0.0.5:3000", "192.168.1.2:80"] {
            assert!(
                matches!(
                    dev.may_serve(&bad.parse().unwrap(), false),
                    Err(SecretError::Development(_))
                ),
                "{bad}"
            );
        }
        assert!(dev.may_serve(&"127.0.0.1:3000".parse().unwrap(), true).is_err());
        let real = Auth::new(SECRET);
        assert!(!real.is_development());
        assert_eq!(real.may_serve(&"0.0.0.0:3000".parse().unwrap(), true), Ok(()));
        // The development secret itself, passed as a secret, verifies its tokens.
        let token = dev.token("shop-a", "u", &[], Duration::from_secs(60));
        assert!(Auth::new(DEVELOPMENT_SECRET.as_bytes()).verify(&token).is_ok());
    }
}
