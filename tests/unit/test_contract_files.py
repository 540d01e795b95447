from pathlib import Path

from pipeline.ingest.contract import INPUT_TOPICS
from pipeline.ops.schemas import check_schemas
from pipeline.ops.topics import CHANGELOG, REPARTITION, load_topics
from pipeline.settings import PROJECT_ROOT

REQUIRED = {
    "channel.web", "channel.app", "channel.email", "channel.store", "channel.callcenter", "channel.chat",
    "ops.inventory", "ops.orders", "privacy.requests", "actions.email", "actions.sms", "actions.push",
    "actions.web", "actions.callcenter", "actions.store", "outcomes", "deadletter", REPARTITION, CHANGELOG,
}  # fmt: skip


def test_schemas_folder_matches_the_models() -> None:
    assert check_schemas(PROJECT_ROOT / "schemas") == [], "run `omni schemas` and commit schemas/"


def test_topics_yaml_declares_every_topic_with_retention_and_policy() -> None:
    specs = load_topics(PROJECT_ROOT / "topics.yaml")
    assert REQUIRED <= set(specs)
    assert set(INPUT_TOPICS) <= set(specs)
    for spec in specs.values():
        assert "retention.ms" in spec.config and "cleanup.policy" in spec.config, spec.name
    assert specs[CHANGELOG].cleanup_policy == "compact"


def test_unequal_state_partitions_are_refused(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "topics.yaml").read_text().replace(
        "internal.events-by-customer: {}", "internal.events-by-customer: {partitions: 8}"
    )
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    try:
        load_topics(path)
    except ValueError as exc:
        assert "same number of partitions" in str(exc)
    else:
        raise AssertionError("accepted unequal partitions")


def test_docs_document_every_setting() -> None:
    from pipeline.settings import ENV_ALIASES, Settings

    readme = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    missing = [
        ENV_ALIASES.get(name, f"OMNI_{name.upper()}")
        for name in Settings.model_fields
        if ENV_ALIASES.get(name, f"OMNI_{name.upper()}") not in readme
    ]
    assert missing == [], f"docs/configuration.md's table lacks {missing}"


def test_docs_show_the_shipped_rules_catalogue_as_it_is() -> None:
    from pipeline.settings import PACKAGE_DATA

    readme = (PROJECT_ROOT / "docs" / "rules.md").read_text()
    assert "```yaml\n" + (PACKAGE_DATA / "rules.yaml").read_text() + "```" in readme, "paste rules.yaml into docs/rules.md"
