//! `/1.0/system/security` and its actions.

use axum::body::Body;
use axum::extract::State;
use axum::http::Method;
use serde::Deserialize;

use super::body::read_object_or_default;
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
