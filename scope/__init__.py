"""The shared domain: environment catalog, roles, users, grants, tokens and the database."""
