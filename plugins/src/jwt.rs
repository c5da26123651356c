//! JWT authentication: a bearer token is verified against configured keys and algorithms,
//! its registered claims checked, and its claims handed on (forwarded headers, templates).
//!
//! Only the configured algorithms are accepted, and a key only verifies algorithms of its own
//! family, so `alg: none` and a token signed with HS256 using an RSA public key as the secret
//! are refused.

use crate::claims::ForwardClaims;
use crate::GatewayError;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// One fixed hasher for the token cache.
static CACHE_HASHER: LazyLock<foldhash::fast::RandomState> =
    LazyLock::new(foldhash::fast::RandomState::default);

/// Refusal reasons that a fresh key set could turn into a pass.
const UNKNOWN_KID: &str = "unknown key id";
const NO_KEY: &str = "no key for this algorithm";

/// Tokens longer than this are refused without being parsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where the verification keys come from.
pub enum KeySource<'a> {
    /// An HMAC secret (HS256/384/512).
    Secret(&'a [u8]),
    /// A PEM public key: RSA, EC or Ed25519.
    PublicPem(&'a [u8]),
    /// A JWKS document (`{"keys": [...]}`); tokens pick a key by `kid`.
    Jwks(&'a str),
    /// A JWKS document fetched later (from a URL) and handed over with
    /// [`JwtVerifier::replace_jwks`]; until then every token is refused.
    JwksLater,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// A token that passed verification, with what it takes to accept it again.
struct Verified {
    token: Box<[u8]>,
    claims: Arc<Value>,
    exp: Option<u64>,
    nbf: Option<u64>,
    keys_generation: u64,
}

/// Tokens longer than this are verified every time, not cached.
const MAX_CACHED_TOKEN: usize = 2048;

pub struct JwtVerifier {
    /// Swapped whole when a fetched JWKS replaces it.
    keys: arc_swap::ArcSwap<Vec<Key>>,
    /// Bumped when the keys change, which voids every cached verification.
    keys_generation: AtomicU64,
    /// Tokens verified lately, so a client's next request with the same token skips the
    /// signature check; `exp` and `nbf` are still checked on every use.
    cache: Box<[Mutex<Option<Verified>>]>,
    leeway: u64,
    /// The key set comes from a URL: keys may be missing or rotated at any time.
    remote: bool,
    /// One prepared validation per accepted algorithm.
    validations: HashMap<Algorithm, Validation>,
    optional: bool,
    forward: ForwardClaims,
}

pub struct JwtSettings<'a> {
    pub algorithms: &'a [String],
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway_secs: u64,
    /// Refuse tokens without `exp` (a present `exp` is always checked).
    pub require_exp: bool,
    pub optional: bool,
    /// claim name -> header sent upstream
    pub forward_claims: &'a [(String, String)],
    /// Verified tokens remembered (0: none).
    pub cache_size: usize,
}

/// The usable keys of a JWKS document.
fn jwks_keys(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}] is not usable: {e}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS holds no key".into());
    }
    Ok(keys)
}

fn invalid(reason: &str) -> GatewayError {
    GatewayError::new(401, "invalid token")
        .with_data(serde_json::json!({ "reason": reason }))
        .with_header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
}

fn missing() -> GatewayError {
    GatewayError::new(401, "missing token").with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    )
}

/// A setting the verifier cannot be built from: the field it is in, relative to the `jwt`
/// block (`keys`, `algorithms[2]`, `forward_claims.sub`), and what is wrong with it.
pub type SettingError = (String, String);

impl JwtVerifier {
    pub fn new(keys: KeySource, s: &JwtSettings) -> Result<JwtVerifier, SettingError> {
        let remote = matches!(keys, KeySource::JwksLater);
        let at_keys = |e: String| ("keys".to_string(), e);
        let keys = match keys {
            KeySource::Secret(secret) => {
                if secret.is_empty() {
                    return Err(at_keys("the secret is empty".into()));
                }
                vec![Key {
                    kid: None,
                    key: DecodingKey::from_secret(secret),
                }]
            }
            KeySource::PublicPem(pem) => {
                let key = DecodingKey::from_rsa_pem(pem)
                    .or_else(|_| DecodingKey::from_ec_pem(pem))
                    .or_else(|_| DecodingKey::from_ed_pem(pem))
                    .map_err(|_| at_keys("not an RSA, EC or Ed25519 public key in PEM".into()))?;
                vec![Key { kid: None, key }]
            }
            KeySource::Jwks(text) => jwks_keys(text).map_err(at_keys)?,
            KeySource::JwksLater => Vec::new(),
        };
        if s.algorithms.is_empty() {
            return Err(("algorithms".into(), "list the accepted algorithms".into()));
        }
        let mut validations = HashMap::new();
        for (i, name) in s.algorithms.iter().enumerate() {
            let at = || format!("algorithms[{i}]");
            let alg = Algorithm::from_str(name)
                .map_err(|_| (at(), format!("unknown algorithm {name:?}")))?;
            if !remote && !keys.iter().any(|k| k.key.family() == alg.family()) {
                return Err((at(), format!("no key can verify {name}")));
            }
            let mut v = Validation::new(alg);
            v.leeway = s.leeway_secs;
            v.validate_nbf = true;
            // A configured issuer or audience must be in the token, not just match when
            // present; `exp` is required unless the route says otherwise.
            v.required_spec_claims.clear();
            if s.require_exp {
                v.required_spec_claims.insert("exp".into());
            }
            if let Some(iss) = s.issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".into());
            }
            match s.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            validations.insert(alg, v);
        }
        let forward = ForwardClaims::new(s.forward_claims.iter().map(|(c, h)| (c, h)))?;
        Ok(JwtVerifier {
            keys: arc_swap::ArcSwap::from_pointee(keys),
            keys_generation: AtomicU64::new(0),
            cache: (0..s.cache_size).map(|_| Mutex::new(None)).collect(),
            leeway: s.leeway_secs,
            remote,
            validations,
            optional: s.optional,
            forward,
        })
    }

    /// Check the `Authorization` header. `Ok(None)`: no token and none required.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<Option<Arc<Value>>, GatewayError> {
        let Some(value) = authorization else {
            return if self.optional {
                Ok(None)
            } else {
                Err(missing())
            };
        };
        let token = match value.split_first_chunk::<7>() {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
            _ => return Err(invalid("not a Bearer token")),
        };
        let token = token.trim_ascii();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("token too large"));
        }
        let slot = self.slot(token);
        let generation = self.keys_generation.load(Ordering::Acquire);
        if let Some(slot) = slot {
            let cached = slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = cached.as_ref() {
                if v.keys_generation == generation && *v.token == *token && self.in_time(v) {
                    return Ok(Some(v.claims.clone()));
                }
            }
        }
        let claims = Arc::new(self.verify_token(token)?);
        if let Some(slot) = slot {
            let time = |name: &str| claims.get(name).and_then(Value::as_u64);
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Verified {
                token: token.into(),
                exp: time("exp"),
                nbf: time("nbf"),
                claims: claims.clone(),
                keys_generation: generation,
            });
        }
        Ok(Some(claims))
    }

    /// The cache slot of a token, when tokens are cached and this one is not too long.
    fn slot(&self, token: &[u8]) -> Option<&Mutex<Option<Verified>>> {
        if self.cache.is_empty() || token.len() > MAX_CACHED_TOKEN {
            return None;
        }
        use std::hash::BuildHasher;
        let h = CACHE_HASHER.hash_one(token);
        Some(&self.cache[(h % self.cache.len() as u64) as usize])
    }

    /// A cached token is still within `exp` and `nbf` (with the leeway), as
    /// jsonwebtoken checks them; otherwise it is verified again, which names the fault.
    fn in_time(&self, v: &Verified) -> bool {
        let now = jsonwebtoken::get_current_timestamp();
        v.exp
            .is_none_or(|exp| exp >= now.saturating_sub(self.leeway))
            && v.nbf.is_none_or(|nbf| nbf <= now + self.leeway)
    }

    /// Full verification: header, key, signature, registered claims.
    fn verify_token(&self, token: &[u8]) -> Result<Value, GatewayError> {
        let header = decode_header(token).map_err(|_| invalid("malformed token"))?;
        // RFC 7515 section 4.1.11: extensions listed in `crit` must be understood, and the
        // gateway understands none.
        if header.crit.is_some() {
            return Err(invalid("unsupported critical header"));
        }
        let Some(validation) = self.validations.get(&header.alg) else {
            return Err(invalid("algorithm not accepted"));
        };
        let family = header.alg.family();
        let keys = self.keys.load();
        let candidates = keys
            .iter()
            .filter(|k| k.key.family() == family)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            });
        let mut any_key = false;
        let mut last_error = "bad signature";
        for k in candidates {
            any_key = true;
            match decode::<Value>(token, &k.key, validation) {
                Ok(data) => return self.check_iat(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind::*;
                    last_error = match e.kind() {
                        ExpiredSignature => "token expired",
                        ImmatureSignature => "token not yet valid",
                        InvalidIssuer => "wrong issuer",
                        InvalidAudience => "wrong audience",
                        InvalidSignature => "bad signature",
                        MissingRequiredClaim(c) => match c.as_str() {
                            "iss" => "missing iss claim",
                            "aud" => "missing aud claim",
                            _ => "missing exp claim",
                        },
                        InvalidAlgorithm => "algorithm not accepted",
                        _ => "malformed token",
                    };
                    // A signature error may just mean another key of the set; any other
                    // error is about the token itself.
                    if !matches!(e.kind(), InvalidSignature) {
                        break;
                    }
                }
            }
        }
        if !any_key {
            return Err(invalid(if header.kid.is_some() {
                UNKNOWN_KID
            } else {
                NO_KEY
            }));
        }
        Err(invalid(last_error))
    }

    /// An `iat` (issued at) later than now, beyond the leeway, is refused: such a token was
    /// minted by a clock or a party that cannot be trusted.
    fn check_iat(&self, claims: Value) -> Result<Value, GatewayError> {
        match claims.get("iat") {
            None => Ok(claims),
            Some(iat) => match iat.as_f64() {
                Some(t) if t <= (jsonwebtoken::get_current_timestamp() + self.leeway) as f64 => {
                    Ok(claims)
                }
                Some(_) => Err(invalid("token issued in the future")),
                None => Err(invalid("malformed iat claim")),
            },
        }
    }

    /// Replace the keys with those of a JWKS document; the number of keys taken.
    pub fn replace_jwks(&self, text: &str) -> Result<usize, String> {
        let keys = jwks_keys(text)?;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        self.keys_generation.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    /// Whether fetching the key set again might make this refused token pass: its key id
    /// is unknown (keys rotated), or no key is loaded yet.
    pub fn refetch_may_help(&self, e: &GatewayError) -> bool {
        self.remote
            && matches!(
                e.data.get("reason").and_then(Value::as_str),
                Some(UNKNOWN_KID | NO_KEY)
            )
    }

    /// Headers to set upstream from the claims; every configured header is listed, with
    /// `None` when the claim is absent, so a client-sent copy can be removed.
    pub fn forwarded<'a>(
        &'a self,
        claims: Option<&'a Value>,
    ) -> impl Iterator<Item = (&'a HeaderName, Option<HeaderValue>)> + 'a {
        self.forward.values(claims)
    }

    /// The claims forwarded upstream.
    pub fn forward_claims(&self) -> &ForwardClaims {
        &self.forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn verifier(optional: bool) -> JwtVerifier {
        JwtVerifier::new(
            KeySource::Secret(b"s3cret"),
            &JwtSettings {
                algorithms: &["HS256".to_string()],
                issuer: Some("https://auth.test"),
                audience: Some("api"),
                leeway_secs: 0,
                require_exp: true,
                optional,
                forward_claims: &[("sub".to_string(), "x-user-id".to_string())],
                cache_size: 64,
            },
        )
        .unwrap()
    }

    fn token(claims: Value, alg: Algorithm, secret: &[u8]) -> Vec<u8> {
        let t = encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        format!("Bearer {t}").into_bytes()
    }

    fn reason(e: GatewayError) -> String {
        e.data["reason"].as_str().unwrap_or(e.message).to_string()
    }

    #[test]
    fn a_cached_token_still_expires_and_new_keys_void_the_cache() {
        let v = verifier(false);
        let claims =
            json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": now() + 1});
        let t = token(claims, Algorithm::HS256, b"s3cret");
        let first = v.verify(Some(&t)).unwrap().unwrap();
        let again = v.verify(Some(&t)).unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second use comes from the cache"
        );
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(reason(v.verify(Some(&t)).unwrap_err()), "token expired");

        // A JWKS verifier: replacing the keys drops what the old keys verified.
        let jwk = |secret: &[u8]| {
            let mut k = jsonwebtoken::jwk::Jwk::from_encoding_key(
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap();
            k.common.key_id = Some("k1".into());
            json!({ "keys": [k] }).to_string()
        };
        let remote = JwtVerifier::new(
            KeySource::Jwks(&jwk(b"old-secret")),
            &JwtSettings {
                algorithms: &["HS256".to_string()],
                issuer: None,
                audience: None,
                leeway_secs: 0,
                require_exp: true,
                optional: false,
                forward_claims: &[],
                cache_size: 8,
            },
        )
        .unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let t = encode(
            &h,
            &json!({"exp": now() + 60}),
            &EncodingKey::from_secret(b"old-secret"),
        )
        .unwrap();
        let t = format!("Bearer {t}").into_bytes();
        assert!(remote.verify(Some(&t)).is_ok());
        assert!(remote.verify(Some(&t)).is_ok());
        remote.replace_jwks(&jwk(b"new-secret")).unwrap();
        assert_eq!(
            reason(remote.verify(Some(&t)).unwrap_err()),
            "bad signature"
        );
    }

    #[test]
    fn the_matrix() {
        let v = verifier(false);
        let good =
            json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": now() + 60});
        let claims = v
            .verify(Some(&token(good.clone(), Algorithm::HS256, b"s3cret")))
            .unwrap();
        assert_eq!(claims.unwrap()["sub"], "u1");

        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = good.clone();
            f(&mut c);
            reason(
                v.verify(Some(&token(c, Algorithm::HS256, b"s3cret")))
                    .unwrap_err(),
            )
        };
        assert_eq!(with(&|c| c["exp"] = json!(now() - 120)), "token expired");
        assert_eq!(
            with(&|c| c["nbf"] = json!(now() + 120)),
            "token not yet valid"
        );
        assert_eq!(with(&|c| c["iss"] = json!("https://evil")), "wrong issuer");
        assert_eq!(with(&|c| c["aud"] = json!("other")), "wrong audience");
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "missing iss claim"
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "missing aud claim"
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing exp claim"
        );
        assert_eq!(
            with(&|c| c["iat"] = json!(now() + 120)),
            "token issued in the future"
        );
        assert_eq!(
            with(&|c| c["iat"] = json!("yesterday")),
            "malformed iat claim"
        );
        assert!(v
            .verify(Some(&token(
                json!({"iss": "https://auth.test", "aud": "api", "exp": now() + 60, "iat": now()}),
                Algorithm::HS256,
                b"s3cret"
            )))
            .is_ok());
        // A `crit` extension the gateway does not know.
        let mut h = Header::new(Algorithm::HS256);
        h.crit = Some(vec!["exp-ext".into()]);
        let crit = encode(&h, &good, &EncodingKey::from_secret(b"s3cret")).unwrap();
        assert_eq!(
            reason(
                v.verify(Some(format!("Bearer {crit}").as_bytes()))
                    .unwrap_err()
            ),
            "unsupported critical header"
        );
        assert_eq!(
            reason(
                v.verify(Some(&token(good.clone(), Algorithm::HS256, b"wrong")))
                    .unwrap_err()
            ),
            "bad signature"
        );
        assert_eq!(
            reason(
                v.verify(Some(&token(good.clone(), Algorithm::HS512, b"s3cret")))
                    .unwrap_err()
            ),
            "algorithm not accepted"
        );
        // alg: none, hand-made.
        let none = b"Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSJ9.";
        assert_eq!(reason(v.verify(Some(none)).unwrap_err()), "malformed token");
        assert_eq!(
            reason(v.verify(Some(b"Basic abc")).unwrap_err()),
            "not a Bearer token"
        );
        let huge = [b"Bearer ".as_slice(), &vec![b'a'; MAX_TOKEN_BYTES + 1]].concat();
        assert_eq!(
            reason(v.verify(Some(&huge)).unwrap_err()),
            "token too large"
        );
        assert_eq!(v.verify(None).unwrap_err().message, "missing token");
        assert!(verifier(true).verify(None).unwrap().is_none());
    }

    #[test]
    fn forwarded_claims() {
        let v = verifier(false);
        let claims = json!({"sub": "u1"});
        let out: Vec<_> = v.forwarded(Some(&claims)).collect();
        assert_eq!(out[0].0, "x-user-id");
        assert_eq!(out[0].1.as_ref().unwrap(), "u1");
        let out: Vec<_> = v.forwarded(None).collect();
        assert!(out[0].1.is_none());
    }

    #[test]
    fn keys_must_fit_the_algorithms() {
        let try_new = |keys: KeySource, alg: &str| {
            let algorithms = [alg.to_string()];
            JwtVerifier::new(
                keys,
                &JwtSettings {
                    algorithms: &algorithms,
                    issuer: None,
                    audience: None,
                    leeway_secs: 0,
                    require_exp: true,
                    optional: false,
                    forward_claims: &[],
                    cache_size: 0,
                },
            )
            .map(|_| ())
        };
        let field = |r: Result<(), SettingError>| r.unwrap_err().0;
        assert_eq!(
            field(try_new(KeySource::Secret(b"x"), "RS256")),
            "algorithms[0]"
        );
        assert_eq!(
            field(try_new(KeySource::Secret(b"x"), "XX256")),
            "algorithms[0]"
        );
        assert_eq!(
            field(try_new(KeySource::Jwks("{\"keys\": []}"), "RS256")),
            "keys"
        );
    }
}
