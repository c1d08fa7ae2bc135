"""contrib/grafana/dcvix.json asks only for series the daemons expose.

A dashboard is JSON that no test runs against Prometheus: a metric renamed in
:mod:`dcvix.director.metrics` or :mod:`dcvix.agent.metrics`, a label dropped or
a typo in a query leaves a panel saying "No data", which looks like a quiet
fleet rather than a broken dashboard. So every query of the dashboard (panels,
rows' nested panels, template variables, annotations) is read here, and each
metric, label, legend label, function and variable it names is checked against
what the daemons' own registries expose: the same ``new_registry`` and metric
classes the daemons run, collected without a network or a Prometheus.

The reading of PromQL is deliberately small (strings, ranges, grouping
clauses, selectors, then bare names), enough for the queries a dashboard
holds; :func:`test_the_checker_reports_every_kind_of_mistake` shows that it
does catch what it is meant to catch.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from dcvix.agent.metrics import AgentMetrics
from dcvix.common.metrics import new_registry
from dcvix.director.metrics import DirectorMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "dcvix.json"

# What every panel, target, query variable and annotation must point at: the
# dashboard's datasource variable, so that one import works on any Grafana.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Labels Prometheus adds to every series it scrapes (the scrape config's job
# and the target), which no registry knows of.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself writes for each target, with only the target labels.
PROMETHEUS_SERIES = frozenset({"up"})
# Variables Grafana defines itself.
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__interval", "__range", "__all"})
# PromQL's functions and aggregation operators (Prometheus 2.x and 3.x): a name
# followed by "(" must be one of these, so "rates(" is caught as well.
_FUNCTION_NAMES = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg
    avg_over_time bottomk ceil changes clamp clamp_max clamp_min cos cosh count
    count_over_time count_values day_of_month day_of_week day_of_year
    days_in_month deg delta deriv double_exponential_smoothing exp floor group
    histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase irate label_join label_replace last_over_time limit_ratio limitk ln
    log10 log2 mad_over_time max max_over_time min min_over_time minute month pi
    predict_linear present_over_time quantile quantile_over_time rad rate resets
    round scalar sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt
    stddev stddev_over_time stdvar stdvar_over_time sum sum_over_time tan tanh
    time timestamp topk vector year
"""
PROMQL_FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
# Words of PromQL that are neither metrics nor functions.
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "group_left", "group_right"}
    | {"by", "without", "on", "ignoring", "inf", "nan"}
)
# The sample names each family type exposes, by suffix of the family's name
# (prometheus_client strips "_total" from a counter family's name and "_info"
# from an info family's). "_created" is exposed unless
# PROMETHEUS_DISABLE_CREATED_SERIES is set; querying it is legitimate.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
# dcvix families the dashboard may leave out on purpose (none yet): any other
# new dcvix_ family fails test_the_dashboard_shows_every_dcvix_family, as a
# reminder to give it a panel.
NOT_SHOWN: frozenset[str] = frozenset()

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
)
_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*""\s*')
# A name not glued to a number ("5m", "1e3"), a variable or a field ("x.y").
_NAME = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_LEGEND = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_LABEL_VALUES = re.compile(
    r"\s*label_values\(\s*(?:(.*),)?\s*([A-Za-z_]\w*)\s*\)\s*", re.S
)


@dataclass(frozen=True)
class Exposed:
    """What the daemons expose: each sample name, its labels and its family."""

    labels: dict[str, frozenset[str]]
    family: dict[str, str]

    def labels_of(self, names: set[str]) -> frozenset[str]:
        """Every label any of ``names`` may carry, and the target labels."""
        found = set(TARGET_LABELS)
        for name in names:
            found |= self.labels.get(name, frozenset())
        return frozenset(found)


def _declared_labels(metrics: DirectorMetrics | AgentMetrics) -> dict[str, set[str]]:
    """Label names of the labelled metrics, by family name.

    A labelled metric has no sample until its first child exists (a counter
    of logins shows nothing before the first login), so its labels cannot be
    read from a collection: prometheus_client keeps them in ``_labelnames``
    only, the one private attribute this test reads.
    """
    declared: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                declared.setdefault(family.name, set()).update(value._labelnames)
    return declared


def _collect(registry: CollectorRegistry, declared: dict[str, set[str]]) -> Exposed:
    """Every sample name ``registry`` can expose, with its labels."""
    labels: dict[str, set[str]] = {}
    family_of: dict[str, str] = {}
    for family in registry.collect():
        assert family.type in SUFFIXES, (
            f"{family.name}: type {family.type} unknown here"
        )
        own = set(declared.get(family.name, ()))
        for sample in family.samples:
            own |= set(sample.labels) - {"le", "quantile"}
        names = {family.name + suffix for suffix in SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            if family.type == "summary" and name == family.name:
                extra = {"quantile"}
            labels.setdefault(name, set()).update(own | extra)
            family_of[name] = family.name
    return Exposed({k: frozenset(v) for k, v in labels.items()}, family_of)


@functools.cache
def exposed() -> Exposed:
    """What a director and an agent expose together (they share process_*)."""
    director = DirectorMetrics(new_registry("director"))
    agent = AgentMetrics(new_registry("agent"))
    labels: dict[str, frozenset[str]] = {}
    family: dict[str, str] = {}
    for metrics in (director, agent):
        found = _collect(metrics.registry, _declared_labels(metrics))
        for name, names in found.labels.items():
            labels[name] = labels.get(name, frozenset()) | names
        family.update(found.family)
    return Exposed(labels, family)


@dataclass
class Parsed:
    """What one PromQL expression names."""

    metrics: set[str] = field(default_factory=set)
    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def parse_promql(expr: str) -> Parsed:
    """The metrics, labels, functions and variables ``expr`` names.

    Strings go first (a route such as "DELETE /v1/sessions/{id}" holds braces,
    and variables such as "$agent_job" live in them), then ranges, grouping
    clauses and selectors; what remains are functions (a name before "(")
    and metrics.
    """
    parsed = Parsed()
    for match in _VARIABLE.finditer(expr):
        parsed.variables.add(next(group for group in match.groups() if group))
    text = _STRING.sub('""', expr)
    text = _RANGE.sub(" ", text)

    def grouping(match: re.Match[str]) -> str:
        parsed.grouping |= {name.strip() for name in match[1].split(",")} - {""}
        return " "

    text = _GROUPING.sub(grouping, text)

    def selector(match: re.Match[str]) -> str:
        name, body = match[1], match[2]
        labels = set()
        for matcher in body.split(","):
            if not matcher.strip():
                continue
            read = _MATCHER.fullmatch(matcher)
            if read is None:
                parsed.problems.append(f"matcher {matcher.strip()!r} not understood")
            else:
                labels.add(read[1])
        if name is None:
            parsed.problems.append(f"selector {{{body}}} names no metric")
            return " "
        parsed.selectors.append((name, labels))
        return f" {name} "

    text = _SELECTOR.sub(selector, text)
    for match in _NAME.finditer(text):
        name, call = match[1], match[2]
        if call:
            parsed.functions.add(name)
        elif name.lower() not in PROMQL_WORDS:
            parsed.metrics.add(name)
    return parsed


@dataclass(frozen=True)
class Query:
    """One query of the dashboard, with where it is for the failure message."""

    where: str
    expr: str
    legend: str = ""


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those a (collapsed) row holds."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    """Every PromQL expression of the dashboard, and the legend it feeds."""
    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            where = (
                f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}"
            )
            yield Query(where, target.get("expr", ""), target.get("legendFormat", ""))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query", "")
        text = query.get("query", "") if isinstance(query, dict) else query
        yield Query(f"variable {variable.get('name')!r}", text)
        if variable.get("definition"):
            yield Query(
                f"variable {variable.get('name')!r} definition", variable["definition"]
            )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            legend = " ".join(
                annotation.get(key, "") for key in ("titleFormat", "textFormat")
            )
            yield Query(
                f"annotation {annotation.get('name')!r}", annotation["expr"], legend
            )


def query_problems(query: Query, known: Exposed, variables: set[str]) -> list[str]:
    """What in ``query`` names something the daemons do not expose."""
    expr = query.expr
    values_of = None
    label_values = _LABEL_VALUES.fullmatch(expr)
    if query.where.startswith("variable"):
        if label_values is None:
            return [f"{query.where}: only label_values(...) is checked here: {expr!r}"]
        expr, values_of = label_values[1] or "", label_values[2]
    parsed = parse_promql(expr)
    problems = list(parsed.problems)
    if not parsed.metrics and not query.where.startswith("variable"):
        problems.append("queries no metric")
    unknown = sorted(
        name
        for name in parsed.metrics
        if name not in known.labels and name not in PROMETHEUS_SERIES
    )
    if unknown:
        problems.append(f"unknown metrics {unknown}")
    functions = sorted(parsed.functions - PROMQL_FUNCTIONS)
    if functions:
        problems.append(f"unknown functions {functions}")
    for name, labels in parsed.selectors:
        if name in known.labels or name in PROMETHEUS_SERIES:
            strange = sorted(labels - known.labels_of({name}))
            if strange:
                problems.append(f"{name} has no labels {strange}")
    # Beyond one selector PromQL can move labels around; anything the
    # expression's metrics carry is accepted for grouping and legends.
    available = (
        known.labels_of(parsed.metrics)
        if parsed.metrics
        else known.labels_of(set(known.labels))
    )
    for what, names in (
        ("groups by", parsed.grouping),
        ("lists values of", {values_of} if values_of else set()),
        ("legend shows", set(_LEGEND.findall(query.legend))),
    ):
        strange = sorted(names - available)
        if strange:
            problems.append(f"{what} labels {strange} that its metrics lack")
    undefined = sorted(parsed.variables - variables - GRAFANA_VARIABLES)
    if undefined:
        problems.append(f"uses undefined variables {undefined}")
    return [f"{query.where}: {problem} in {query.expr!r}" for problem in problems]


def dashboard_problems(dashboard: dict[str, Any], known: Exposed) -> list[str]:
    """Every query problem of ``dashboard`` (empty: all its series exist)."""
    variables = {
        v.get("name", "") for v in dashboard.get("templating", {}).get("list", [])
    }
    problems: list[str] = []
    for query in queries(dashboard):
        problems += query_problems(query, known, variables)
    return problems


def structure_problems(dashboard: dict[str, Any]) -> list[str]:
    """What would make the file a poor Grafana import, short of its queries."""
    problems = []
    if not isinstance(dashboard.get("title"), str) or not dashboard["title"]:
        problems.append("no title")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(dashboard.get("uid", ""))):
        problems.append(f"uid {dashboard.get('uid')!r} is not a Grafana uid")
    if (
        not isinstance(dashboard.get("schemaVersion"), int)
        or dashboard["schemaVersion"] < 36
    ):
        problems.append("schemaVersion before 36 (Grafana 9)")
    if "__inputs" in dashboard:
        problems.append("__inputs: the datasource variable replaces them")
    variables = dashboard.get("templating", {}).get("list", [])
    sources = [v for v in variables if v.get("name") == "datasource"]
    if [(v.get("type"), v.get("query")) for v in sources] != [
        ("datasource", "prometheus")
    ]:
        problems.append("no datasource variable of type datasource for prometheus")
    for variable in variables:
        if variable.get("type") == "query" and variable.get("datasource") != DATASOURCE:
            problems.append(f"variable {variable.get('name')!r} not on ${{datasource}}")
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation and annotation.get("datasource") != DATASOURCE:
            problems.append(
                f"annotation {annotation.get('name')!r} not on ${{datasource}}"
            )
    seen: dict[int, str] = {}
    for panel in panels(dashboard.get("panels", [])):
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int):
            problems.append(f"{name}: no integer id")
        elif panel["id"] in seen:
            problems.append(f"{name}: id also used by {seen[panel['id']]!r}")
        else:
            seen[panel["id"]] = str(panel.get("title"))
        if not panel.get("title"):
            problems.append(f"{name}: no title")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{name}: datasource {panel.get('datasource')!r}")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{name}: no query")
        for target in targets:
            if target.get("datasource") != DATASOURCE or not target.get("expr"):
                problems.append(
                    f"{name} {target.get('refId')}: no expr on ${{datasource}}"
                )
        if len({target.get("refId") for target in targets}) != len(targets):
            problems.append(f"{name}: refIds repeat")
    return problems


def load(path: Path) -> dict[str, Any]:
    """The dashboard at ``path`` (a JSON object)."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def test_every_series_the_dashboard_queries_is_exposed() -> None:
    """A panel on a series nobody exposes says "No data", not "broken"."""
    problems = dashboard_problems(load(DASHBOARD), exposed())
    assert not problems, (
        f"{DASHBOARD} queries what dcvix does not expose:\n" + "\n".join(problems)
    )


def test_the_dashboard_imports_into_grafana() -> None:
    """One file imports into any Grafana, on whichever Prometheus it picks."""
    problems = structure_problems(load(DASHBOARD))
    assert not problems, f"{DASHBOARD}:\n" + "\n".join(problems)


def test_the_dashboard_shows_every_dcvix_family() -> None:
    """A metric nobody sees is a metric nobody notices when it moves."""
    known = exposed()
    shown = set()
    for query in queries(load(DASHBOARD)):
        expr = query.expr
        label_values = _LABEL_VALUES.fullmatch(expr)
        if label_values is not None:
            expr = label_values[1] or ""
        shown |= {
            known.family[name]
            for name in parse_promql(expr).metrics
            if name in known.family
        }
    families = {
        family for family in known.family.values() if family.startswith("dcvix_")
    }
    missing = sorted(families - shown - NOT_SHOWN)
    assert not missing, (
        f"no panel of {DASHBOARD} shows {missing} (or list them in NOT_SHOWN)"
    )


def test_the_registries_expose_what_the_check_relies_on() -> None:
    """The registries are read right: an empty problem list then means something."""
    labels = exposed().labels
    assert labels["dcvix_logins_total"] == {"backend", "outcome"}  # no child yet
    assert labels["dcvix_call_to_agent_seconds_bucket"] == {"route", "le"}
    assert labels["dcvix_call_to_agent_seconds_count"] == {"route"}
    assert labels["dcvix_build_info"] == {"daemon", "version"}
    assert labels["dcvix_agent_cpu_seconds_total"] == {"mode"}
    assert labels["dcvix_session_clients"] == frozenset()
    assert "process_cpu_seconds_total" in labels
    assert "python_gc_collections_total" in labels
    # prometheus_client's family names are not sample names.
    assert "dcvix_logins" not in labels
    assert "dcvix_build" not in labels
    assert "dcvix_call_to_agent_seconds" not in labels


def test_the_checker_reports_every_kind_of_mistake() -> None:
    """Each check fails on the mistake it is there for, naming the culprit."""
    dashboard = copy.deepcopy(load(DASHBOARD))
    panel = next(p for p in panels(dashboard["panels"]) if p.get("targets"))
    panel["targets"][0]["expr"] = (
        'sum by (flavour) (rates(dcvix_bogus_total{job="$nope"}[5m]))'
        ' + dcvix_agents{colour="red"} + {job="x"}'
    )
    panel["targets"][0]["legendFormat"] = "{{nope_label}}"
    panel["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    panel["id"] = dashboard["panels"][0]["id"]

    problems = "\n".join(dashboard_problems(dashboard, exposed()))
    for culprit in (
        "unknown metrics ['dcvix_bogus_total']",
        "unknown functions ['rates']",
        "dcvix_agents has no labels ['colour']",
        "groups by labels ['flavour']",
        "legend shows labels ['nope_label']",
        "uses undefined variables ['nope']",
        "names no metric",
    ):
        assert culprit in problems, f"{culprit!r} not reported in:\n{problems}"
    structure = "\n".join(structure_problems(dashboard))
    assert "datasource {'type': 'prometheus', 'uid': 'prometheus'}" in structure
    assert "id also used by" in structure


def test_parse_promql_leaves_labels_strings_and_numbers_out() -> None:
    """Labels, quoted braces, variables and numbers are never taken for metrics."""
    parsed = parse_promql(
        "histogram_quantile(0.95, sum by (route, le) ("
        "rate(dcvix_call_to_agent_seconds_bucket"
        '{job="$director_job", route="DELETE /v1/sessions/{id}"}[$__rate_interval]'
        " offset 5m))) / 1e3"
    )
    assert parsed.metrics == {"dcvix_call_to_agent_seconds_bucket"}
    assert parsed.functions == {"histogram_quantile", "sum", "rate"}
    assert parsed.grouping == {"route", "le"}
    assert parsed.selectors == [
        ("dcvix_call_to_agent_seconds_bucket", {"job", "route"})
    ]
    assert parsed.variables == {"director_job", "__rate_interval"}
    assert not parsed.problems
