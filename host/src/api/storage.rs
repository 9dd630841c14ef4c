//! `/1.0/system/storage` and its actions. Bodies are tolerant (an empty body is `{}`), as
//! upstream's. Changes run one at a time; every change but `:scrub-pool` and
//! `:cleanup-root` tells the provider afterwards.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Uri};
use plugin_api::provider::RefreshCause;
use serde::Deserialize;

use super::body::read_object_or_default;
use super::response::{empty, sync};
use super::uri::Params;
use super::{require, unmatched, ApiError, ApiResult, AppState};
use crate::system::storage::actions::Refusal;
use crate::system::storage::cron;
use crate::system::storage::model::{StorageConfig, SystemStorage};
use crate::system::storage::runtime::with_machine;

/// `GET|PUT /1.0/system/storage`.
pub async fn storage(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    match method {
        Method::GET => {
            let state = with_machine(&app, |m| m.state())
                .await
                .map_err(ApiError::internal)?;
            let scrub_schedule = app.with_state(|s| s.doc().system.storage.scrub_schedule.clone());
            Ok(sync(&SystemStorage {
                config: StorageConfig {
                    scrub_schedule,
                    pools: Vec::new(),
                },
                state,
            }))
        }
        Method::PUT => {
            let put: SystemStorage = read_object_or_default(body).await?;
            let schedule = put.config.scrub_schedule;
            cron::Schedule::parse(&schedule).map_err(|_| ApiError::bad_request(cron::INVALID))?;
            let _changing = app.storage.changes.lock().await;
            app.with_state(|s| s.update(|d| d.system.storage.scrub_schedule = schedule))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            app.storage.schedule_changed();
            if put.config.pools.is_empty() {
                return Ok(empty());
            }
            for pool in put.config.pools {
                with_machine(&app, move |m| m.apply_pool(&pool))
                    .await
                    .map_err(ApiError::internal)?;
            }
            crate::system::provider::notify(&app, RefreshCause::StorageConfigChanged).await;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

#[derive(Deserialize, Default)]
struct DriveBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    secure_wipe: bool,
    #[serde(default)]
    key: String,
}

#[derive(Deserialize, Default)]
struct PoolBody {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    encryption_key: String,
}

#[derive(Deserialize, Default)]
struct VolumeBody {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    quota: i64,
    #[serde(default, rename = "use")]
    usage: String,
    #[serde(default)]
    force: bool,
}

const ACTIONS: [&str; 10] = [
    ":cleanup-root",
    ":create-volume",
    ":delete-pool",
    ":delete-volume",
    ":encrypt-drive",
    ":import-encrypted-drive",
    ":import-pool",
    // The seed API's name of `:import-pool`.
    ":import-encryption-key",
    ":scrub-pool",
    ":wipe-drive",
];

fn pool_and_volume(v: &VolumeBody) -> Result<(), ApiError> {
    if v.pool.is_empty() {
        return Err(ApiError::bad_request("no pool name provided"));
    }
    if v.pool.contains('/') {
        return Err(ApiError::bad_request("invalid pool name provided"));
    }
    if v.name.is_empty() {
        return Err(ApiError::bad_request("no volume name provided"));
    }
    if v.name.contains('/') {
        return Err(ApiError::bad_request("invalid volume name provided"));
    }
    Ok(())
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::ScrubRunning => ApiError::new(409, r.to_string()),
        Refusal::Failed(e) => ApiError::internal(e),
    }
}

/// `POST /1.0/system/storage/:<action>`.
pub async fn action(
    State(app): State<AppState>,
    uri: Uri,
    method: Method,
    body: Body,
) -> ApiResult {
    let params = Params::at_depth(uri.path(), 4);
    let name = params.name().to_string();
    if !ACTIONS.contains(&name.as_str()) {
        return Err(unmatched(&method));
    }
    require(&method, &[Method::POST])?;
    if name == ":cleanup-root" {
        // No body, no provider notification.
        let _changing = app.storage.changes.lock().await;
        with_machine(&app, |m| m.cleanup_root())
            .await
            .map_err(ApiError::internal)?;
        return Ok(empty());
    }
    let result = match name.as_str() {
        ":wipe-drive" | ":encrypt-drive" | ":import-encrypted-drive" => {
            let b: DriveBody = read_object_or_default(body).await?;
            if b.id.is_empty() {
                return Err(ApiError::bad_request("no drive specified"));
            }
            let _changing = app.storage.changes.lock().await;
            with_machine(&app, move |m| match name.as_str() {
                ":wipe-drive" => m.wipe_drive(&b.id, b.secure_wipe),
                ":encrypt-drive" => m.encrypt_drive(&b.id, b.secure_wipe),
                _ => m.import_encrypted_drive(&b.id, &b.key),
            })
            .await
            .map_err(Refusal::Failed)
        }
        ":delete-pool" | ":scrub-pool" => {
            let b: PoolBody = read_object_or_default(body).await?;
            if b.name.is_empty() {
                return Err(ApiError::bad_request("no pool name provided"));
            }
            let _changing = app.storage.changes.lock().await;
            if name == ":scrub-pool" {
                // Started, not waited for; nothing for the provider.
                return with_machine(&app, move |m| m.scrub_pool(&b.name))
                    .await
                    .map(|_| empty())
                    .map_err(refused);
            }
            with_machine(&app, move |m| m.delete_pool(&b.name))
                .await
                .map_err(Refusal::Failed)
        }
        ":import-pool" | ":import-encryption-key" => {
            let b: PoolBody = read_object_or_default(body).await?;
            if b.name.is_empty() || b.kind.is_empty() {
                return Err(ApiError::bad_request("missing pool name and type"));
            }
            if b.kind != "zfs" {
                return Err(ApiError::bad_request(format!(
                    "unsupported pool type '{}'",
                    b.kind
                )));
            }
            let _changing = app.storage.changes.lock().await;
            with_machine(&app, move |m| m.import_pool(&b.name, &b.encryption_key))
                .await
                .map_err(Refusal::Failed)
        }
        ":create-volume" => {
            let b: VolumeBody = read_object_or_default(body).await?;
            pool_and_volume(&b)?;
            if b.usage.is_empty() {
                return Err(ApiError::bad_request("no volume use provided"));
            }
            if b.usage != "incus" && b.usage != "linstor" {
                return Err(ApiError::bad_request("invalid volume use provided"));
            }
            let _changing = app.storage.changes.lock().await;
            with_machine(&app, move |m| {
                m.create_volume(&b.pool, &b.name, b.quota, &b.usage)
            })
            .await
            .map_err(Refusal::Failed)
        }
        _ => {
            // :delete-volume
            let b: VolumeBody = read_object_or_default(body).await?;
            pool_and_volume(&b)?;
            let _changing = app.storage.changes.lock().await;
            with_machine(&app, move |m| m.delete_volume(&b.pool, &b.name, b.force))
                .await
                .map_err(Refusal::Failed)
        }
    };
    result.map_err(refused)?;
    crate::system::provider::notify(&app, RefreshCause::StorageConfigChanged).await;
    Ok(empty())
}
