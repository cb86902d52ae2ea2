DROP TABLE search_token;
