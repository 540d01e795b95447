from pipeline.ingest.normalise import is_junk, normalise_email, normalise_identifiers, normalise_phone


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalise_email("  Anna.Berg@Example.COM ") == "anna.berg@example.com"
    assert normalise_email("not-an-email") is None


def test_phone_becomes_e164_with_default_region() -> None:
    assert normalise_phone("20 12 34 56", "DK") == "+4520123456"
    assert normalise_phone("+45 20-12-34-56", "DK") == "+4520123456"
    assert normalise_phone("070-123 45 67", "SE") == "+46701234567"
    assert normalise_phone("12", "DK") is None


def test_placeholders_never_identify_anyone() -> None:
    for value in ("", " ", "null", "undefined", "anonymous", "-1", "0000000", "00000000-0000-0000-0000-000000000000"):
        assert is_junk(value), value
    assert not is_junk("C0000001")


def test_normalise_identifiers_reports_what_it_dropped() -> None:
    clean, dropped = normalise_identifiers(
        {"customer_id": " C1 ", "email": "bad", "cookie_id": "undefined", "phone": "+4520123456"}, "DK"
    )
    assert clean == {"customer_id": "C1", "phone": "+4520123456"}
    assert sorted(dropped) == [("cookie_id", "junk"), ("email", "invalid")]


def test_blocked_identifiers_never_identify_anyone() -> None:
    blocked = frozenset({"kiosk-1", "email:test@shop.dk"})
    clean, dropped = normalise_identifiers(
        {"device_id": "kiosk-1", "email": " Test@Shop.dk ", "cookie_id": "kiosk-1x"}, "DK", blocked
    )
    assert clean == {"cookie_id": "kiosk-1x"}
    assert sorted(dropped) == [("device_id", "blocked"), ("email", "blocked")]


def test_a_worker_normaliser_caches_each_type_apart() -> None:
    from pipeline.ingest.normalise import Normaliser

    normalise = Normaliser("DK", frozenset({"kiosk-1"}), per_type=2)
    assert normalise({"phone": "20 12 34 56", "device_id": "kiosk-1"}) == ({"phone": "+4520123456"}, [("device_id", "blocked")])
    for n in range(5):  # a new cookie per session: only the cookies' own cache turns over
        assert normalise({"cookie_id": f"c{n}"}) == ({"cookie_id": f"c{n}"}, [])
    assert list(normalise._verdicts["cookie_id"]) == ["c3", "c4"]
    assert list(normalise._verdicts["phone"]) == ["20 12 34 56"]
    assert normalise({"device_id": "kiosk-1", "email": " Anna@X.dk "}) == ({"email": "anna@x.dk"}, [("device_id", "blocked")])
