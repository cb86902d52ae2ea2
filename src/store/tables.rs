//! Diesel's typed view of the two tables the hottest query reads: a read by id
//! runs through diesel's typed query builder, whose statements have a static
//! identity and are found in the connection's prepared-statement cache without
//! rendering their text (measured: a read by id through the dynamic `Sql` builder,
//! which renders and hashes its text on every execution, served 15 % fewer reads
//! per second; docs/benchmarks.md). Every other statement of the store is built
//! with `Sql`.

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

diesel::allow_tables_to_appear_in_same_query!(resource_versions, resources_current);
