"""SCIM 2.0 provisioning (RFC 7643, RFC 7644) of the users, under /scim/v2."""
