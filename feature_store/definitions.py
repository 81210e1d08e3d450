"""What the feature store serves, as plain data: entities, feature views over the marts, feature services.

Feast's concepts, kept by name: an :class:`Entity` is a join key (a viewer, an author, a post); a :class:`FeatureView`
is a set of features read from one registry table, keyed by its entities, each row stamped with the moment its
values became known (``feature_ts``) and valid for a TTL; a :class:`FeatureService` is the named, versioned set of
views one model version is trained and served with. Nothing here touches Spark: the checks against a source's real
schema happen when the source is read (``feature_store.sources``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta

FEATURE_TS = "feature_ts"  # the column every view's rows carry, whatever the source calls it
FEATURE_AGE = "feature_age_hours"  # the optional request-time column of a view: event ts - feature_ts, in hours
SEPARATOR = "__"  # output columns are <view>__<feature>

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SIMPLE_TYPES = {"boolean", "tinyint", "smallint", "int", "bigint", "float", "double", "string", "date", "timestamp"}
_DECIMAL = re.compile(r"^decimal\(\s*\d+\s*,\s*\d+\s*\)$")


class FeatureDefinitionError(ValueError):
    """A definition is inconsistent; the message lists every problem, each naming its view, feature or entity."""


@dataclass(frozen=True)
class Entity:
    """A thing features describe, by the columns that identify it in an entity frame (e.g. impressions)."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """Features of ``entities`` read from the registry table ``source`` (``layer.name``).

    ``source_keys`` are the source's key columns, matched in order to the entities' join keys (``user_id`` serves as
    ``viewer_id`` for one view and as ``author_id`` for another). ``features`` are (name, Spark SQL type) pairs,
    read from the source column of that name, or computed by the Spark SQL expression given in ``expressions``
    (name -> expression over the source row). A row's values are known from its ``timestamp_column`` on and are
    valid for ``ttl`` after it (None: the setting ``feature_store.default_ttl_hours``). ``with_feature_age`` adds
    ``<view>__feature_age_hours`` to training rows (a request-time value, never stored online).
    """

    name: str
    entities: tuple[Entity, ...]
    source: str
    source_keys: tuple[str, ...]
    features: tuple[tuple[str, str], ...]
    timestamp_column: str = FEATURE_TS
    ttl: timedelta | None = None
    expressions: tuple[tuple[str, str], ...] = ()
    with_feature_age: bool = False
    description: str = ""

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.features)

    def expression(self, feature: str) -> str | None:
        return dict(self.expressions).get(feature)

    def output_column(self, feature: str) -> str:
        return f"{self.name}{SEPARATOR}{feature}"

    def output_columns(self) -> list[tuple[str, str]]:
        """The columns this view adds to an entity frame, with their types, in order."""
        out = [(self.output_column(n), t) for n, t in self.features]
        if self.with_feature_age:
            out.append((self.output_column(FEATURE_AGE), "double"))
        return out

    def ttl_or(self, default: timedelta) -> timedelta:
        return self.ttl if self.ttl is not None else default

    def select(self, *names: str) -> FeatureView:
        """The same view with a subset of its features (Feast's projection ``view[[...]]``)."""
        unknown = [n for n in names if n not in self.feature_names]
        if unknown:
            raise FeatureDefinitionError(f"feature view {self.name}: no feature {', '.join(unknown)}")
        keep = tuple(f for f in self.features if f[0] in names)
        return replace(self, features=keep, expressions=tuple(e for e in self.expressions if e[0] in names))


@dataclass(frozen=True)
class FeatureService:
    """The views (and their features) one model version uses; ``name`` names its training-set table."""

    name: str
    version: int
    views: tuple[FeatureView, ...]
    description: str = ""

    def view(self, name: str) -> FeatureView:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"feature service {self.name} has no view {name!r}; views: {', '.join(self.view_names)}")

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.views)

    @property
    def join_keys(self) -> tuple[str, ...]:
        """Every join key the entity frame must carry, in first-seen order."""
        return tuple(dict.fromkeys(k for v in self.views for k in v.join_keys))

    def output_columns(self) -> list[tuple[str, str]]:
        return [c for v in self.views for c in v.output_columns()]


# --- validation -----------------------------------------------------------------------------------------------------


def is_valid_type(type_string: str) -> bool:
    """Whether ``type_string`` is a Spark SQL type this store handles: a simple type, decimal(p, s), array<...>."""
    t = type_string.strip().lower()
    if t in _SIMPLE_TYPES or _DECIMAL.match(t):
        return True
    if t.startswith("array<") and t.endswith(">"):
        return is_valid_type(t[len("array<") : -1])
    return False


def view_problems(view: FeatureView) -> list[str]:
    """Every problem of one view (empty when it is consistent)."""
    where = f"feature view {view.name!r}"
    out: list[str] = []
    if not _NAME.match(view.name) or SEPARATOR in view.name:
        out.append(f"{where}: name must be lowercase letters, digits and single underscores")
    if not view.entities:
        out.append(f"{where}: has no entity")
    if len(view.source_keys) != len(view.join_keys):
        out.append(
            f"{where}: {len(view.source_keys)} source keys {list(view.source_keys)} for "
            f"{len(view.join_keys)} join keys {list(view.join_keys)}"
        )
    if len(set(view.join_keys)) != len(view.join_keys):
        out.append(f"{where}: join keys repeat: {list(view.join_keys)}")
    if view.source.count(".") != 1:
        out.append(f"{where}: source {view.source!r} is not a registry name layer.table")
    if view.ttl is not None and view.ttl <= timedelta(0):
        out.append(f"{where}: ttl must be positive, got {view.ttl}")
    if not view.features:
        out.append(f"{where}: has no feature")
    names = view.feature_names
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"{where}: feature {dup!r} is defined twice")
    reserved = {FEATURE_TS, *view.join_keys} | ({FEATURE_AGE} if view.with_feature_age else set())
    for name, type_string in view.features:
        if not _NAME.match(name) or SEPARATOR in name:
            out.append(f"{where}: feature {name!r}: name must be lowercase letters, digits and single underscores")
        if name in reserved:
            out.append(f"{where}: feature {name!r} takes a reserved column name")
        if not is_valid_type(type_string):
            out.append(f"{where}: feature {name!r}: unknown type {type_string!r}")
    for name, _ in view.expressions:
        if name not in names:
            out.append(f"{where}: expression for {name!r}, which is not a feature of the view")
    return out


def service_problems(service: FeatureService) -> list[str]:
    """Every problem of a service and of its views (empty when it is consistent)."""
    where = f"feature service {service.name!r}"
    out: list[str] = []
    if not _NAME.match(service.name):
        out.append(f"{where}: name must be lowercase letters, digits and underscores (it names a table)")
    if service.version < 1:
        out.append(f"{where}: version must be >= 1, got {service.version}")
    if not service.views:
        out.append(f"{where}: has no view")
    names = service.view_names
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"{where}: view {dup!r} appears twice")
    entities: dict[str, tuple[str, ...]] = {}
    for view in service.views:
        out.extend(view_problems(view))
        for e in view.entities:
            if entities.setdefault(e.name, e.join_keys) != e.join_keys:
                out.append(
                    f"{where}: entity {e.name!r} has join keys {list(entities[e.name])} in one view and "
                    f"{list(e.join_keys)} in view {view.name!r}"
                )
    return out


def validate_service(service: FeatureService) -> FeatureService:
    """Return ``service`` unchanged, or raise :class:`FeatureDefinitionError` listing every problem."""
    problems = service_problems(service)
    if problems:
        raise FeatureDefinitionError("invalid feature definitions:\n  " + "\n  ".join(problems))
    return service


# --- the definitions ------------------------------------------------------------------------------------------------

VIEWER = Entity("viewer", ("viewer_id",), "a user looking at a feed (the impression's viewer)")
AUTHOR = Entity("author", ("author_id",), "a user whose post is shown")
POST = Entity("post", ("post_id",), "a feed post")

# Every column below counts only what happened before the row's feature_ts (see the marts' .yml). The marts' region
# and is_private are left out: they are today's values (bronze keeps no history), so joining them to an old
# impression would leak the future.
VIEWER_VIEW = FeatureView(
    name="viewer",
    entities=(VIEWER,),
    source="marts.dim_user_features",
    source_keys=("user_id",),
    features=(
        ("account_age_days", "double"),
        ("followers", "bigint"),
        ("followees", "bigint"),
        ("feed_reads_7d", "bigint"),
        ("impressions_7d", "bigint"),
        ("likes_7d", "bigint"),
        ("like_rate_7d", "double"),
    ),
    description="the viewer's daily snapshot: age, graph size, feed activity and like rate of the last 7 days",
)
AUTHOR_VIEW = FeatureView(
    name="author",
    entities=(AUTHOR,),
    source="marts.dim_user_features",
    source_keys=("user_id",),
    features=(
        ("account_age_days", "double"),
        ("followers", "bigint"),
        ("followees", "bigint"),
        ("posts_7d", "bigint"),
    ),
    description="the author's daily snapshot: age, graph size and posting rate",
)
POST_VIEW = FeatureView(
    name="post",
    entities=(POST,),
    source="marts.dim_post_features",
    source_keys=("post_id",),
    features=(
        ("age_hours", "double"),
        ("media_count", "int"),
        ("caption_length", "int"),
        ("hashtag_count", "int"),
        ("impressions", "bigint"),
        ("likes", "bigint"),
        ("comments", "bigint"),
        ("saves", "bigint"),
        ("shares", "bigint"),
        ("hides", "bigint"),
        ("like_rate", "double"),
        ("author_followers", "bigint"),
    ),
    description="the post's daily snapshot (its first days): engagement since creation, shape of the post",
)
VIEWER_AUTHOR_VIEW = FeatureView(
    name="viewer_author",
    entities=(VIEWER, AUTHOR),
    source="marts.fct_viewer_author_affinity",
    source_keys=("viewer_id", "author_id"),
    features=(
        ("decayed_likes", "double"),
        ("decayed_comments", "double"),
        ("decayed_dms", "double"),
        ("decayed_profile_visits", "double"),
        ("affinity_score", "double"),
    ),
    # Rows exist only on interaction days; a quiet pair keeps its last row, decayed further by the reader with
    # pow(0.5, age / half-life): the age comes with it. After 30 days (a 7-day half-life) little is left.
    ttl=timedelta(days=30),
    with_feature_age=True,
    description="how close the viewer is to the author: time-decayed likes, comments, DMs and profile visits",
)
# The words of the caption that start with '#' and one more character, as dim_post_features counts them (so
# size(hashtags) = hashtag_count); case and order kept. Known from the post's creation on, and never change.
HASHTAGS_SQL = r"filter(split(coalesce(caption, ''), '\\s+'), word -> word like '#_%')"
POST_HASHTAGS_VIEW = FeatureView(
    name="post_hashtags",
    entities=(POST,),
    source="bronze.posts",
    source_keys=("post_id",),
    timestamp_column="created_at",
    features=(("hashtags", "array<string>"),),
    expressions=(("hashtags", HASHTAGS_SQL),),
    ttl=timedelta(days=3650),
    description="the post's hashtags, static from its creation",
)

RANKER_V1 = FeatureService(
    name="ranker_v1",
    version=1,
    views=(VIEWER_VIEW, AUTHOR_VIEW, POST_VIEW, VIEWER_AUTHOR_VIEW, POST_HASHTAGS_VIEW),
    description="the multi-task feed ranker, version 1",
)

# The two towers read no pair features: each tower sees one side only, so items can be embedded once for all users.
TWO_TOWER_USER_V1 = FeatureService(
    name="two_tower_user_v1",
    version=1,
    views=(VIEWER_VIEW,),
    description="the two-tower model's user tower (keys: viewer_id)",
)
TWO_TOWER_ITEM_V1 = FeatureService(
    name="two_tower_item_v1",
    version=1,
    views=(AUTHOR_VIEW, POST_VIEW),
    description="the two-tower model's item tower (keys: post_id, author_id)",
)

SERVICES: dict[str, FeatureService] = {s.name: s for s in (RANKER_V1, TWO_TOWER_USER_V1, TWO_TOWER_ITEM_V1)}


def get_service(name: str) -> FeatureService:
    """A registered feature service by name, validated; the error lists the known ones."""
    try:
        return validate_service(SERVICES[name])
    except KeyError:
        raise KeyError(f"unknown feature service {name!r}; known: {', '.join(sorted(SERVICES))}") from None


def views_of(service_or_views: FeatureService | FeatureView | Iterable[FeatureView]) -> tuple[FeatureView, ...]:
    if isinstance(service_or_views, FeatureService):
        return service_or_views.views
    if isinstance(service_or_views, FeatureView):
        return (service_or_views,)
    return tuple(service_or_views)
