"""The small HTTP API over the readers, in the seed's shapes: ``GET /api/v1/feed?cursor=&limit=``,
``GET /api/v1/stories/feed``, ``GET /api/v1/explore?limit=``, the user from the ``X-User-Id`` header, ids as decimal
strings (64-bit ids do not fit a JSON number in every client). The OpenAPI document is at ``/openapi.json``.

Errors are 4xx with ``{"detail": message}``, never 500: a bad cursor 400, an unknown user 404, an expired cursor 410,
a bad or missing parameter or header 422 (FastAPI's validation), nothing published yet or Redis unreachable 503.

``create_app(settings)`` builds the app (one ``redis.asyncio`` client per process, from ``settings.redis_url``);
``app_from_env`` is uvicorn's factory (``uvicorn --factory serving.api:app_from_env``), settings from the
environment (``DARKROOM_REDIS_URL``, ``DARKROOM_SERVING__*``).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, which name ``cfg`` (a closure).
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from serving.errors import BadCursorError, CursorExpiredError, NotPublishedError, UnknownUserError
from serving.keys import GROUPS, KeySpace
from serving.readers import (
    ExplorePage,
    ExploreReader,
    FeedPage,
    FeedPost,
    FeedReader,
    ReaderConfig,
    StoryRing,
    StoryRingReader,
)
from serving.writer import connect_async

if TYPE_CHECKING:
    from darkroom.settings import DarkroomSettings

MAX_ID = (1 << 63) - 1
UserId = Annotated[
    int, Header(alias="X-User-Id", ge=1, le=MAX_ID, description="the signed-in user's id (64-bit, positive)")
]


class ErrorOut(BaseModel):
    detail: str = Field(description="what was wrong, and what to do")


class AuthorOut(BaseModel):
    user_id: str | None


class PostOut(BaseModel):
    post_id: str
    author: AuthorOut
    caption: str | None
    media_count: int | None
    like_count: int | None
    comment_count: int | None
    created_at: str | None = Field(description="UTC ISO 8601")
    score: float
    source: str = Field(description="timeline (pushed), pull (a pull-mode author's recent post) or explore")


class FeedOut(BaseModel):
    posts: list[PostOut]
    next_cursor: str | None = Field(description="pass back as ?cursor= for the next page; null on the last page")
    has_more: bool
    version: str = Field(description="the published version the page was read from")


class RingOut(BaseModel):
    user_id: str
    has_unseen: bool
    score: float
    expires_at: str


class StoriesOut(BaseModel):
    story_ring: list[RingOut]
    version: str


class ExploreOut(BaseModel):
    posts: list[PostOut]
    version: str


class HealthOut(BaseModel):
    status: str
    versions: dict[str, str | None]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a cursor this API did not issue to this user"},
    404: {"model": ErrorOut, "description": "the current version holds nothing for this user"},
    503: {"model": ErrorOut, "description": "nothing published yet, or the serving store is unreachable"},
}


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def _json(model: BaseModel) -> Response:
    """The model serialised once (FastAPI would validate a returned model against response_model again)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _post_out(p: FeedPost) -> PostOut:
    return PostOut(
        post_id=str(p.post_id),
        author=AuthorOut(user_id=None if p.author_id is None else str(p.author_id)),
        caption=p.caption,
        media_count=p.media_count,
        like_count=p.like_count,
        comment_count=p.comment_count,
        created_at=_iso(p.created_at_ms),
        score=p.score,
        source=p.source,
    )


def create_app(settings: "DarkroomSettings", redis_url: str | None = None) -> FastAPI:
    url = redis_url or settings.redis_url
    cfg = ReaderConfig.from_settings(settings.serving)
    cluster = settings.serving.cluster
    keys = KeySpace(cfg.key_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = connect_async(url, cluster=cluster)
        app.state.feed = FeedReader(client, cfg)
        app.state.stories = StoryRingReader(client, cfg)
        app.state.explore = ExploreReader(client, cfg)
        app.state.client = client
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(
        title="darkroom serving API",
        version="1",
        description="The reference read path over the published Redis keys (serving/README.md).",
        lifespan=lifespan,
    )

    def _error(status: int, e: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(e)})

    @app.exception_handler(BadCursorError)
    async def _bad_cursor(request: Request, e: BadCursorError) -> JSONResponse:
        return _error(400, e)

    @app.exception_handler(UnknownUserError)
    async def _unknown(request: Request, e: UnknownUserError) -> JSONResponse:
        return _error(404, e)

    @app.exception_handler(CursorExpiredError)
    async def _expired(request: Request, e: CursorExpiredError) -> JSONResponse:
        return _error(410, e)

    @app.exception_handler(NotPublishedError)
    async def _not_published(request: Request, e: NotPublishedError) -> JSONResponse:
        return _error(503, e)

    import redis
    from redis.exceptions import RedisClusterException

    # A cluster client that reaches no node (or no node serving a slot) raises RedisClusterException, which is not
    # a RedisError.
    @app.exception_handler(redis.RedisError)
    @app.exception_handler(RedisClusterException)
    async def _store(request: Request, e: redis.RedisError | RedisClusterException) -> JSONResponse:
        return _error(503, RuntimeError(f"the serving store is unavailable: {type(e).__name__}: {e}"))

    @app.get(
        "/api/v1/feed",
        response_model=FeedOut,
        responses={**ERRORS, 410: {"model": ErrorOut, "description": "the cursor's version expired: start over"}},
    )
    async def get_feed(
        request: Request,
        user_id: UserId,
        cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=cfg.page_max, description="posts per page")] = 20,
    ) -> Response:
        """The home feed: the precomputed timeline merged with the pull-mode authors' recent posts, by score."""
        page: FeedPage = await request.app.state.feed.aget_feed(user_id, cursor or None, limit)
        out = FeedOut(
            posts=[_post_out(p) for p in page.posts],
            next_cursor=page.next_cursor,
            has_more=page.has_more,
            version=page.version,
        )
        return _json(out)

    @app.get("/api/v1/stories/feed", response_model=StoriesOut, responses=ERRORS)
    async def get_stories(request: Request, user_id: UserId) -> StoriesOut:
        """The story ring: authors with a live story, unseen first, then by engagement."""
        ring: StoryRing = await request.app.state.stories.aget_ring(user_id)
        return StoriesOut(
            story_ring=[
                RingOut(
                    user_id=str(e.author_id),
                    has_unseen=e.has_unseen,
                    score=e.score,
                    expires_at=_iso(e.expires_at_ms) or "",
                )
                for e in ring.ring
            ],
            version=ring.version,
        )

    @app.get("/api/v1/explore", response_model=ExploreOut, responses=ERRORS)
    async def get_explore(
        request: Request,
        user_id: UserId,
        limit: Annotated[int, Query(ge=1, le=cfg.page_max, description="candidates")] = 20,
    ) -> ExploreOut:
        """Explore: the two-tower candidates ranked by the ranker's value score."""
        page: ExplorePage = await request.app.state.explore.aget_explore(user_id, limit)
        return ExploreOut(posts=[_post_out(p) for p in page.posts], version=page.version)

    @app.get("/healthz", response_model=HealthOut, responses={503: ERRORS[503]})
    async def healthz(request: Request) -> HealthOut:
        """The current version of every group (null: nothing published)."""
        pipe = request.app.state.client.pipeline(transaction=False)
        for group in GROUPS:
            pipe.get(keys.pointer(group))
        replies = await pipe.execute()
        return HealthOut(
            status="ok",
            versions={g: None if v is None else v.decode() for g, v in zip(GROUPS, replies, strict=True)},
        )

    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory: settings from the environment and the YAML profile, loaded once here."""
    from darkroom.settings import load_settings

    return create_app(load_settings())
