"""API tokens expire: api_tokens.expires_at (every token has one)

Tokens issued before this revision get the default lifetime counted from the
upgrade, so none stops working the moment the upgrade runs and none lives
for ever.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-28
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0007'
branch_labels = None
depends_on = None

_LEGACY_TTL = dt.timedelta(days=90)


def upgrade() -> None:
    op.add_column('api_tokens', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    tokens = sa.table('api_tokens', sa.column('expires_at', sa.DateTime(timezone=True)))
    op.execute(tokens.update().where(tokens.c.expires_at.is_(None))
               .values(expires_at=dt.datetime.now(dt.timezone.utc) + _LEGACY_TTL))
    # batch: SQLite cannot add NOT NULL to an existing column in place.
    with op.batch_alter_table('api_tokens') as batch:
        batch.alter_column('expires_at', existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('expires_at')
