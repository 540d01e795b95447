"""Identity: recognise the customer behind an event's identifiers."""
