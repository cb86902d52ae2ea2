DROP TABLE import_failures;
