"""Who pays the upstream for a request: the operator's key, or the person's own.

``[funding] modes`` says what a gateway offers: ``["operator"]`` (every request is paid
with the operator's key, the default), ``["user"]`` (each person connects their own
OpenRouter account on the dashboard and every live request of theirs is paid by it;
without one their apps get ``funding_unavailable``), or both (a person's own source
when they connected one, else the operator's). ``test_apps_operator_funded`` keeps
test-mode apps on the operator's key for development.

- :mod:`gateway.funding.vault`: the connected keys sealed at rest (envelope encryption).
- :mod:`gateway.funding.pkce`: the PKCE verifier and challenge of a connect attempt.
- :mod:`gateway.funding.openrouter`: the authorization URL and the code exchange.
- :mod:`gateway.funding.funder`: a request's funding, resolved per request.
"""
