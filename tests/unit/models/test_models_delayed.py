"""Delayed labels: outcomes answer the latest prediction per join key, within the horizon."""

from __future__ import annotations

from models_helpers import model_set
from river import linear_model

DAY = 86400.0

CHURN = """
- name: churn
  kind: binary
  pipeline: LogisticRegression
  applies_to: {kinds: [usage]}
  features: [customer.usage]
  label:
    outcome:
      positive: [customer_churned]
      negative: [offer_accepted]
      join: customer
      horizon: 1d
      max_pending: 3
"""


def usage(customer_id: str, ts: float, kind: str = "usage") -> dict:
    return {"id": f"{customer_id}-{ts}", "ts": ts, "kind": kind, "customer_id": customer_id}


def outcome(customer_id: str, ts: float, type_: str = "customer_churned", **extra: object) -> dict:
    return {
        "outcome_id": f"o-{customer_id}-{ts}",
        "type": type_,
        "customer_id": customer_id,
        "ts": ts,
        **extra,
    }


def reference_after(*examples: tuple[dict, bool]) -> float:
    """What the same pipeline predicts for usage=20 after learning ``examples``."""
    model = linear_model.LogisticRegression()
    for x, y in examples:
        model.learn_one(x, y)
    return model.predict_proba_one({"usage": 20.0})[True]


def test_outcome_learns_with_the_features_of_the_prediction_not_the_current_state() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})
    # state moves on, but this event is not one the model scores
    models.process(usage("c1", 50.0, kind="telemetry"), customer={"usage": 90.0})

    models.observe_outcome(outcome("c1", 100.0))

    probe = models.process(usage("c9", 200.0), customer={"usage": 20.0})
    assert probe["churn"] == reference_after(({"usage": 5.0}, True))
    assert probe["churn"] != reference_after(({"usage": 90.0}, True))
    report = models.metrics()["churn"]
    assert (report["outcomes_matched"], report["n_labelled"], report["Accuracy"]) == (1, 1, 0.0)


def test_the_latest_prediction_per_customer_is_the_one_answered() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})
    models.process(usage("c1", 10.0), customer={"usage": 40.0})

    models.observe_outcome(outcome("c1", 20.0, "offer_accepted"))

    probe = models.process(usage("c9", 30.0), customer={"usage": 20.0})
    assert probe["churn"] == reference_after(({"usage": 40.0}, False))


def test_metrics_use_the_prediction_made_at_the_time() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})  # p = 0.5 -> predicts False
    models.observe_outcome(outcome("c1", 10.0, "offer_accepted"))

    assert models.metrics()["churn"]["Accuracy"] == 1.0


def test_an_outcome_answers_once() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})
    models.observe_outcome(outcome("c1", 10.0))
    models.observe_outcome(outcome("c1", 11.0))

    report = models.metrics()["churn"]
    assert (report["outcomes_matched"], report["n_labelled"], report["pending"]) == (1, 1, 0)


def test_outcome_after_the_horizon_is_dropped_unlearned() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})

    models.observe_outcome(outcome("c1", 2 * DAY))

    probe = models.process(usage("c9", 3 * DAY), customer={"usage": 20.0})
    assert probe["churn"] == reference_after()
    report = models.metrics()["churn"]
    assert (report["outcomes_matched"], report["n_labelled"], report["pending_dropped"]) == (
        0,
        0,
        1,
    )


def test_pending_predictions_expire_as_stream_time_passes_the_horizon() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})
    models.process(usage("c2", 0.5 * DAY), customer={"usage": 5.0})
    assert models.metrics()["churn"]["pending"] == 2

    models.process(usage("c3", 1.2 * DAY), customer={"usage": 5.0})

    report = models.metrics()["churn"]
    assert (report["pending"], report["pending_dropped"]) == (2, 1)
    models.observe_outcome(outcome("c1", 1.2 * DAY))
    assert models.metrics()["churn"]["outcomes_matched"] == 0


def test_pending_is_bounded_by_max_pending_oldest_first() -> None:
    models = model_set(CHURN)
    for i, customer_id in enumerate(["c1", "c2", "c3", "c4"]):
        models.process(usage(customer_id, float(i)), customer={"usage": 5.0})

    report = models.metrics()["churn"]
    assert (report["pending"], report["pending_dropped"]) == (3, 1)
    models.observe_outcome(outcome("c1", 10.0))
    models.observe_outcome(outcome("c4", 10.0))
    assert models.metrics()["churn"]["outcomes_matched"] == 1


def test_outcome_older_than_the_prediction_does_not_answer_it() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 100.0), customer={"usage": 5.0})

    models.observe_outcome(outcome("c1", 50.0))

    report = models.metrics()["churn"]
    assert (report["outcomes_matched"], report["pending"]) == (0, 1)


def test_unrelated_outcome_types_and_keys_are_ignored() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})

    models.observe_outcome(outcome("c1", 5.0, "coupon_redeemed"))
    models.observe_outcome(outcome("c2", 5.0))
    models.observe_outcome({"outcome_id": "o", "type": "customer_churned", "ts": 5.0})

    assert models.metrics()["churn"]["outcomes_matched"] == 0
    assert models.metrics()["churn"]["pending"] == 1


def test_join_by_device() -> None:
    models = model_set(
        """
        - name: fault
          kind: binary
          pipeline: LogisticRegression
          features: [event.vibration]
          label: {outcome: {positive: [maintenance_confirmed], negative: [maintenance_no_fault],
                            join: device, horizon: 7d}}
        """
    )
    for device_id in ("d1", "d2"):
        models.process(
            {"id": "e", "ts": 0.0, "device_id": device_id, "customer_id": "c1", "vibration": 0.9}
        )

    models.observe_outcome(
        {
            "outcome_id": "o1",
            "type": "maintenance_confirmed",
            "customer_id": "c1",
            "device_id": "d2",
            "ts": 3600.0,
        }
    )

    report = models.metrics()["fault"]
    assert (report["outcomes_matched"], report["pending"]) == (1, 1)


def test_join_by_action_needs_the_action_bound_to_the_prediction() -> None:
    models = model_set(
        """
        - name: offer_uptake
          kind: binary
          pipeline: LogisticRegression
          features: [customer.usage]
          label: {outcome: {positive: [offer_accepted], negative: [offer_declined],
                            join: action, horizon: 14d}}
        """
    )
    models.process(usage("c1", 0.0), customer={"usage": 3.0})
    accepted = {
        "outcome_id": "o1",
        "type": "offer_accepted",
        "customer_id": "c1",
        "action_id": "a-1",
        "ts": 100.0,
    }

    models.observe_outcome(accepted)
    assert models.metrics()["offer_uptake"]["outcomes_matched"] == 0

    models.bind_action("a-1", customer_id="c1")
    models.observe_outcome(accepted)
    assert models.metrics()["offer_uptake"]["outcomes_matched"] == 1


def test_regression_outcome_learns_the_outcome_value() -> None:
    models = model_set(
        """
        - name: spend
          kind: regression
          pipeline: LinearRegression
          features: [customer.usage]
          label: {outcome: {types: [order_placed], join: customer, horizon: 30d}}
        """
    )
    models.process(usage("c1", 0.0), customer={"usage": 2.0})
    models.observe_outcome(outcome("c1", 10.0, "order_placed", value=40.0))

    reference = linear_model.LinearRegression()
    reference.learn_one({"usage": 2.0}, 40.0)
    probe = models.process(usage("c2", 20.0), customer={"usage": 2.0})
    assert probe["spend"] == reference.predict_one({"usage": 2.0})
    assert models.metrics()["spend"]["MAE"] == 40.0


def test_an_erased_customer_leaves_no_pending_prediction_behind() -> None:
    models = model_set(CHURN)
    models.process(usage("c1", 0.0), customer={"usage": 5.0})
    models.process(usage("c2", 1.0), customer={"usage": 7.0})
    assert models.forget({"c1", "d-of-c1"}) == 1
    assert models.forget({"c1"}) == 0, "forgetting twice finds nothing"
    # c1's outcome answers nothing now; c2's still does.
    models.observe_outcome(outcome("c1", 100.0))
    models.observe_outcome(outcome("c2", 100.0))
    assert models.metrics()["churn"]["outcomes_matched"] == 1
