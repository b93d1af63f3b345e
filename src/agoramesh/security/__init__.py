"""Security: server-enforced membership (trust), agent access control, TLS certificates.

End-to-end encryption of directed bodies lives with the envelope, in
``agoramesh.bus.e2e``. docs/SECURITY.md explains the model and its choices.
"""

__all__: tuple[str, ...] = ()

__all__ = ()
