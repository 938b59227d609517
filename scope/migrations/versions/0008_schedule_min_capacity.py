"""the scheduler remembers an Application Auto Scaling MinCapacity it lowered for the night

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the service has no scalable target (or its MinCapacity was 0), nothing to restore.
    op.add_column('schedule_scaled_services', sa.Column('min_capacity', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('schedule_scaled_services') as batch:
        batch.drop_column('min_capacity')
