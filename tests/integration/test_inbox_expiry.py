"""The inbox's lifecycle rule (issue 22, point 6): uploads nobody turned into a job expire in the
storage itself, whatever the service does; compose and Kubernetes set it with this command."""

from __future__ import annotations

from shared.cli import admin
from shared.core.storage import BlobStore


def test_the_inbox_expiry_rule_is_set_kept_and_leaves_other_rules_alone(inbox_store, capsys):
    s3, bucket = inbox_store._s3, inbox_store.bucket
    # Given an inbox bucket with a rule of the operator's own
    theirs = {"ID": "theirs", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 30}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]})
    # When the deploy runs the command, twice, the second time with another length
    assert admin.main(["storage", "inbox-expiry"]) == 0
    assert admin.main(["storage", "inbox-expiry", "--days", "2"]) == 0
    # Then the bucket holds the operator's rule and one of ours, with the last length
    rules = {rule["ID"]: rule for rule in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert sorted(rules) == ["theirs", BlobStore.EXPIRY_RULE]
    assert rules[BlobStore.EXPIRY_RULE]["Expiration"] == {"Days": 2}
    assert rules[BlobStore.EXPIRY_RULE]["Status"] == "Enabled"
    assert rules["theirs"]["Expiration"] == {"Days": 30}
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"bucket {bucket}: objects expire 2 days after they were written"


def test_a_bucket_without_rules_gets_the_expiry_rule(inbox_store):
    s3, bucket = inbox_store._s3, inbox_store.bucket
    s3.delete_bucket_lifecycle(Bucket=bucket)  # the storage server outlives a test
    assert admin.main(["storage", "inbox-expiry", "--days", "1"]) == 0
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert (rule["ID"], rule["Expiration"]) == (BlobStore.EXPIRY_RULE, {"Days": 1})
