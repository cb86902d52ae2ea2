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
