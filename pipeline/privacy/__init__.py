"""Privacy: erasure of a person on request (``privacy.requests``), and export of what is held about them."""
