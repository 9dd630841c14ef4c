//! `/1.0/system/security` and its actions.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::body::{read_object, read_object_or_default};
use super::proxy::{self, NotProxied};
use super::response::{empty, sync};
use super::{require, ApiError, ApiResult, AppState};
use crate::platform::systemd::PowerAction;
use crate::system::security::{self, SecurityConfig};

#[derive(Deserialize, Default)]
struct SecurityPut {
    #[serde(default)]
    config: SecurityConfig,
}

/// Runs blocking security work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// `GET|PUT /1.0/system/security`.
pub async fn security(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    match method {
        Method::GET => {
            let app2 = app.clone();
            let answer = blocking(move || {
                let doc = app2.with_state(|s| s.doc().system.security.clone());
                security::get(&app2.root, &app2.platform.kernel, &app2.security, &doc)
                    .map_err(ApiError::internal)
            })
            .await?;
            Ok(sync(&answer))
        }
        Method::PUT => {
            // Tolerant: an empty body is `{}` (and its empty key list is refused).
            let put: SecurityPut = read_object_or_default(body).await?;
            let _change = app.security.change.lock().await;
            let stored = app.with_state(|s| s.doc().system.security.clone());
            let plan = security::plan_keys(
                &stored.config.encryption_recovery_keys,
                &put.config.encryption_recovery_keys,
            )
            .map_err(|(status, msg)| ApiError::new(status, msg))?;
            security::check_ca_certs(&put.config.custom_ca_certs).map_err(ApiError::internal)?;
            let app2 = app.clone();
            blocking(move || {
                let cmds = app2.platform.commands.clone();
                let (root, rt) = (&app2.root, &app2.security);
                security::apply_keys(cmds.as_ref(), root, rt, &plan).map_err(ApiError::internal)?;
                let certs = put.config.custom_ca_certs;
                let undo_keys = || security::revert_keys(cmds.as_ref(), root, rt, &plan);
                if certs != stored.config.custom_ca_certs {
                    if let Err(e) = security::write_trust_store(root, &certs) {
                        undo_keys();
                        if let Err(e) =
                            security::write_trust_store(root, &stored.config.custom_ca_certs)
                        {
                            tracing::error!(error = %e, "cannot restore the trust store");
                        }
                        return Err(ApiError::internal(e));
                    }
                    tracing::info!("custom CA certificates updated; programs already running keep the old ones until a reboot");
                }
                let saved = app2.with_state(|s| {
                    s.update(|d| {
                        d.system.security.config.encryption_recovery_keys = plan.result.clone();
                        d.system.security.config.custom_ca_certs = certs.clone();
                    })
                });
                if let Err(e) = saved {
                    undo_keys();
                    if certs != stored.config.custom_ca_certs {
                        let _ = security::write_trust_store(root, &stored.config.custom_ca_certs);
                    }
                    return Err(ApiError::internal(e.to_string()));
                }
                Ok(())
            })
            .await?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `POST /1.0/system/security/:retrieved`: the operator has the keys (the console's
/// warning goes away). The body is ignored.
pub async fn retrieved(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::POST])?;
    app.with_state(|s| s.update(|d| d.system.security.encryption_recovery_keys_retrieved = true))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(empty())
}

/// `POST /1.0/system/security/:tpm-rebind`: binds the volumes' TPM slots to the PCR values
/// of this boot, then reboots. The body is ignored.
pub async fn tpm_rebind(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::POST])?;
    // Upstream's refusal first; then the reboot that ends it must be possible before
    // anything is re-bound.
    if security::rebind::tpm_unlocked_all(&app.platform.kernel).map_err(ApiError::internal)? {
        return Err(ApiError::internal(security::rebind::REFUSAL));
    }
    app.platform
        .units
        .reachable()
        .map_err(|e| ApiError::new(503, format!("cannot reboot: {}", e.0)))?;
    let _change = app.security.change.lock().await;
    let app2 = app.clone();
    blocking(move || {
        let (name, version, keys) = app2.with_state(|s| {
            let d = s.doc();
            (
                d.os.name.clone(),
                d.os.running_release.clone(),
                d.system.security.config.encryption_recovery_keys.clone(),
            )
        });
        security::rebind::rebind(
            app2.platform.commands.as_ref(),
            &app2.root,
            &app2.platform.kernel,
            &app2.security,
            &security::rebind::Release { name, version },
            &keys,
        )
        .map_err(ApiError::internal)
    })
    .await?;
    app.request_power(PowerAction::Reboot)?;
    Ok(empty())
}

/// `GET /internal/secureboot`: the certificates enrolled in PK, KEK, db and dbx, as PEM.
pub async fn internal_secureboot(
    _: NotProxied,
    State(app): State<AppState>,
    method: Method,
) -> ApiResult {
    require(&method, &[Method::GET])?;
    let kernel = app.platform.kernel.clone();
    let certs = blocking(move || {
        let mut out = serde_json::Map::new();
        for db in security::secureboot::DATABASES {
            let pems: Vec<String> = security::secureboot::database_certificates(&kernel, db)
                .map_err(ApiError::internal)?
                .iter()
                .map(|d| security::secureboot::pem(d))
                .collect();
            let value = if db == "PK" {
                serde_json::Value::from(pems.into_iter().next().unwrap_or_default())
            } else {
                serde_json::Value::from(pems)
            };
            out.insert(db.to_lowercase(), value);
        }
        Ok(out)
    })
    .await?;
    Ok(sync(&certs))
}

#[derive(Deserialize)]
struct RegistrationPost {
    #[serde(default)]
    token: String,
}

/// `POST /internal/auth/:generate-registration` (strict body `{"token"}`).
pub async fn generate_registration(
    _: NotProxied,
    State(app): State<AppState>,
    method: Method,
    body: Body,
) -> ApiResult {
    require(&method, &[Method::POST])?;
    let post: RegistrationPost = read_object(body).await?;
    if post.token.is_empty() {
        return Err(ApiError::bad_request("missing registration token"));
    }
    let reg = blocking(move || {
        security::auth::registration(
            app.platform.commands.as_ref(),
            &app.root,
            &app.security,
            &post.token,
        )
        .map_err(ApiError::internal)
    })
    .await?;
    Ok(sync(&reg))
}

/// `POST /internal/auth/:generate-token` (the body is ignored).
pub async fn generate_token(
    _: NotProxied,
    State(app): State<AppState>,
    method: Method,
) -> ApiResult {
    require(&method, &[Method::POST])?;
    let token = blocking(move || {
        security::auth::token(app.platform.commands.as_ref(), &app.root, &app.security)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(sync(&token))
}

/// `GET /1.0/debug/secureboot`.
pub async fn debug_secureboot(method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    Ok(sync(&[proxy::url(
        &headers,
        &["debug", "secureboot", "event-log"],
    )]))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LogEvent {
    index: u32,
    #[serde(rename = "Type")]
    kind: u32,
    data: String,
    digest: String,
}

/// `GET /1.0/debug/secureboot/event-log`: the firmware's events for PCRs 4, 7 and 11 (with
/// their SHA-256 digests) and the TPM's PCR 4 and 7.
pub async fn debug_event_log(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::GET])?;
    let out = blocking(move || {
        use crate::platform::tpm::{eventlog, hex};
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let log = eventlog::read(&app.platform.kernel)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::internal("no TPM event log: the firmware measured nothing"))?;
        let events: Vec<LogEvent> = log
            .events
            .iter()
            .filter(|e| matches!(e.pcr, 4 | 7 | 11))
            .map(|e| LogEvent {
                index: e.pcr,
                kind: e.event_type,
                data: b64(&e.data),
                digest: e.sha256().map(|d| b64(&d)).unwrap_or_default(),
            })
            .collect();
        let mut tpm = app
            .security
            .open_tpm(&app.root)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let pcr = |t: &mut crate::platform::tpm::Tpm, n| {
            t.read_pcr(n)
                .map(|v| hex(&v))
                .map_err(|e| ApiError::internal(e.to_string()))
        };
        Ok(serde_json::json!({
            "event_log": events,
            "pcr4": pcr(&mut tpm, 4)?,
            "pcr7": pcr(&mut tpm, 7)?,
        }))
    })
    .await?;
    Ok(sync(&out))
}

/// `POST /1.0/debug/secureboot/:update`: applies a Secure Boot key update archive (the
/// request body) as the update checker would: at most one variable, a reboot needed after.
pub async fn debug_secureboot_update(
    State(app): State<AppState>,
    method: Method,
    body: Body,
) -> ApiResult {
    require(&method, &[Method::POST])?;
    let data = super::body::read_json(body).await?;
    let _change = app.security.change.lock().await;
    let app2 = app.clone();
    blocking(move || {
        let app = app2;
        let kernel = &app.platform.kernel;
        if !security::secure_boot_enabled(kernel).map_err(ApiError::internal)? {
            return Err(ApiError::bad_request(
                "cannot apply certificate update when Secure Boot is disabled",
            ));
        }
        let updates = security::sbupdate::parse_archive(&data).map_err(ApiError::internal)?;
        security::sbupdate::apply(
            app.platform.commands.as_ref(),
            &app.root,
            kernel,
            &app.security,
            &updates,
        )
        .map_err(ApiError::internal)?;
        Ok(())
    })
    .await?;
    Ok(empty())
}
