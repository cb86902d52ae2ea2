//! Diesel table definitions shared by both backends (the migrations under
//! `migrations/sqlite` and `migrations/postgres` create the same shape).

diesel::table! {
    resource_versions (seq) {
        seq -> BigInt,
        resource_type -> Text,
        resource_id -> Text,
        version_id -> BigInt,
        last_updated -> BigInt,
        deleted -> Bool,
        method -> Text,
        key_id -> BigInt,
        body -> Binary,
    }
}

diesel::table! {
    resources_current (rid) {
        rid -> BigInt,
        resource_type -> Text,
        resource_id -> Text,
        version_id -> BigInt,
        last_updated -> BigInt,
        deleted -> Bool,
    }
}

diesel::table! {
    data_keys (key_id) {
        key_id -> BigInt,
        purpose -> Text,
        wrapped -> Binary,
        created -> BigInt,
    }
}

diesel::table! {
    key_check (id) {
        id -> Integer,
        sealed -> Binary,
        created -> BigInt,
    }
}

diesel::table! {
    audit_log (seq) {
        seq -> BigInt,
        audit_id -> Text,
        recorded -> BigInt,
        action -> Text,
        outcome -> Text,
        key_id -> BigInt,
        body -> Binary,
        prev_hash -> Nullable<Binary>,
        hash -> Nullable<Binary>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(resource_versions, resources_current);

diesel::table! {
    search_blind (pid, h, rid) {
        rid -> BigInt,
        pid -> BigInt,
        h -> BigInt,
    }
}

diesel::table! {
    search_date (rid, pid, lo, hi) {
        rid -> BigInt,
        pid -> BigInt,
        lo -> BigInt,
        hi -> BigInt,
    }
}

diesel::table! {
    search_number (rid, pid, k, lo, hi) {
        rid -> BigInt,
        pid -> BigInt,
        k -> BigInt,
        lo -> Double,
        hi -> Double,
    }
}

diesel::table! {
    search_reference (rid, pid, target_type, target_id, url) {
        rid -> BigInt,
        pid -> BigInt,
        target_type -> Text,
        target_id -> Text,
        url -> Text,
    }
}

diesel::table! {
    search_uri (rid, pid, uri) {
        rid -> BigInt,
        pid -> BigInt,
        uri -> Text,
    }
}

diesel::table! {
    reindex_jobs (job_id) {
        job_id -> Text,
        resource_type -> Text,
        status -> Text,
        after_rid -> BigInt,
        processed -> BigInt,
        total -> BigInt,
        created -> BigInt,
        updated -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_until -> BigInt,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    search_param_status (resource_id) {
        resource_id -> Text,
        version_id -> BigInt,
        active -> Bool,
        updated -> BigInt,
    }
}

diesel::table! {
    search_registry (id) {
        id -> Integer,
        generation -> BigInt,
    }
}

diesel::table! {
    import_progress (unit, part) {
        unit -> Text,
        part -> BigInt,
        done_at -> BigInt,
    }
}

// SMART authorization (src/store/auth.rs).

diesel::table! {
    auth_clients (client_id) {
        client_id -> Text,
        name -> Text,
        auth_method -> Text,
        secret_hash -> Nullable<Binary>,
        jwks -> Nullable<Text>,
        jwks_uri -> Nullable<Text>,
        redirect_uris -> Text,
        scope -> Nullable<Text>,
        grant_types -> Text,
        created -> BigInt,
    }
}

diesel::table! {
    auth_users (username) {
        username -> Text,
        password_hash -> Text,
        fhir_user -> Text,
        role -> Text,
        break_glass -> Bool,
        failed_logins -> BigInt,
        locked_until -> BigInt,
        created -> BigInt,
    }
}

diesel::table! {
    auth_launches (launch_hash) {
        launch_hash -> Binary,
        patient -> Text,
        encounter -> Nullable<Text>,
        username -> Nullable<Text>,
        expires -> BigInt,
        used -> Bool,
    }
}

diesel::table! {
    auth_codes (code_hash) {
        code_hash -> Binary,
        client_id -> Text,
        redirect_uri -> Text,
        code_challenge -> Text,
        grant_id -> Text,
        details -> Text,
        expires -> BigInt,
        used -> Bool,
    }
}

diesel::table! {
    auth_refresh_tokens (token_hash) {
        token_hash -> Binary,
        grant_id -> Text,
        client_id -> Text,
        details -> Text,
        expires -> BigInt,
        used -> Bool,
        created -> BigInt,
    }
}

diesel::table! {
    auth_revoked (seq) {
        seq -> BigInt,
        token_id -> Text,
        expires -> BigInt,
        revoked_at -> BigInt,
    }
}

diesel::table! {
    auth_jti (client_id, jti) {
        client_id -> Text,
        jti -> Text,
        expires -> BigInt,
    }
}

diesel::table! {
    auth_signing_keys (kid) {
        kid -> Text,
        alg -> Text,
        key_id -> BigInt,
        sealed -> Binary,
        public_jwk -> Text,
        created -> BigInt,
    }
}
