"""The operator dashboard (/dashboard/ on the operator port): see app.py."""
