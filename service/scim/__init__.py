"""SCIM 2.0 provisioning (RFC 7643, RFC 7644) of the users and groups, under /scim/v2."""
