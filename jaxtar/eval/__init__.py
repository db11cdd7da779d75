"""Evaluation and red teaming: multiple-choice scoring, loss probes, a judge hook, attack suites, reports.

Example:
    >>> from jaxtar.eval import RedTeamData, red_team
    >>> results = red_team({"base": "out/base", "tar": "out/tar"}, "toy", RedTeamData.toy(),
    ...                    out_dir="rt")  # doctest: +SKIP
    >>> print(results.summary("tar").worst_forget_after)  # doctest: +SKIP
"""

from jaxtar.eval.durability import RecoveryCurve, forget_auc, steps_to_recover
from jaxtar.eval.judge import Judge, JudgeResult, JudgeTask, judge_generations, refusal_keyword_judge
from jaxtar.eval.mcq import (
    EvalSet,
    MCQResult,
    PreparedEval,
    Scores,
    binomial_stderr,
    evaluate,
    prepare_probe,
    probe_loss,
    score_mcq,
)
from jaxtar.eval.mcq_prompts import (
    DOMAIN_SUBJECTS,
    MCQBatch,
    excluded_subjects,
    letter_token_ids,
    mcq_prompts,
    prepare_mcq,
)
from jaxtar.eval.redteam import attack_batches, evaluate_models, red_team, run_attack
from jaxtar.eval.redteam_inputs import RedTeamData, check_models
from jaxtar.eval.report import (
    AttackRun,
    ModelSummary,
    RedTeamResults,
    markdown_table,
    plot_attack_losses,
    plot_forget_accuracy,
    write_report,
)
from jaxtar.eval.suites import adapt_suite, adversary_from_dict, load_suite, name_adversaries, toy_suite

__all__ = [
    "RecoveryCurve",
    "forget_auc",
    "steps_to_recover",
    "DOMAIN_SUBJECTS",
    "AttackRun",
    "EvalSet",
    "Judge",
    "JudgeResult",
    "JudgeTask",
    "MCQBatch",
    "MCQResult",
    "ModelSummary",
    "PreparedEval",
    "RedTeamData",
    "RedTeamResults",
    "Scores",
    "adapt_suite",
    "adversary_from_dict",
    "attack_batches",
    "binomial_stderr",
    "check_models",
    "evaluate",
    "evaluate_models",
    "excluded_subjects",
    "judge_generations",
    "letter_token_ids",
    "load_suite",
    "markdown_table",
    "mcq_prompts",
    "name_adversaries",
    "plot_attack_losses",
    "plot_forget_accuracy",
    "prepare_mcq",
    "prepare_probe",
    "probe_loss",
    "red_team",
    "refusal_keyword_judge",
    "run_attack",
    "score_mcq",
    "toy_suite",
    "write_report",
]
