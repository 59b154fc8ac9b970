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
//! let auth = Auth::new(b"a secret of the deployment");
//! let token = auth.token("shop-a", "user-1", &["staff"], Duration::from_secs(3600));
//! let ctx = auth.verify(&token).unwrap();
//! assert_eq!((ctx.tenant_code.as_str(), ctx.user_id.as_str()), ("shop-a", "user-1"));
//! assert_eq!(ctx.roles, ["staff"]);
//! assert!(Auth::new(b"another secret").verify(&token).is_err());
//! ```

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
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
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
    /// Signs and verifies with `secret`.
    pub fn new(secret: &[u8]) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            keys: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
            }),
        }
    }

    /// The secret of [`SECRET_ENV`]; without it (or when it is empty), the
    /// development secret, with a warning.
    pub fn from_env() -> Auth {
        match std::env::var(SECRET_ENV) {
            Ok(secret) if !secret.is_empty() => Auth::new(secret.as_bytes()),
            _ => {
                tracing::warn!(
                    "{SECRET_ENV} is not set: using the development secret; anyone can forge tokens"
                );
                Auth::new(DEVELOPMENT_SECRET.as_bytes())
            }
        }
    }

    /// A token for `user` of `tenant` with `roles`, valid for `ttl`.
    pub fn token(&self, tenant: &str, user: &str, roles: &[&str], ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.to_owned(),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: Some(now.saturating_add(ttl.as_secs())),
            iat: Some(now),
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

    const SECRET: &[u8] = b"test-secret";

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
            auth.verify(&sign(good.clone(), Algorithm::HS256, b"other")),
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
        assert!(!format!("{:?}", Auth::new(b"very-secret")).contains("very-secret"));
    }
}
