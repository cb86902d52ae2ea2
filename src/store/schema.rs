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
    resources_current (resource_type, resource_id) {
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
    search_token (resource_type, resource_id, param, code_hash) {
        resource_type -> Text,
        resource_id -> Text,
        param -> Text,
        code_hash -> Binary,
        system_code_hash -> Nullable<Binary>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(search_token, resources_current);
