"""schedules: operator pauses, the desired counts the scheduler remembers, completed down periods

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('schedule_pauses',
    sa.Column('environment', sa.String(length=100), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('paused_by', sa.String(length=320), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('environment')
    )
    op.create_table('schedule_scaled_services',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('environment', sa.String(length=100), nullable=False),
    sa.Column('service', sa.String(length=255), nullable=False),
    sa.Column('desired', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('environment', 'service', name='uq_schedule_scaled_service')
    )
    op.create_table('schedule_periods',
    sa.Column('environment', sa.String(length=100), nullable=False),
    sa.Column('period', sa.String(length=40), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('environment')
    )


def downgrade() -> None:
    op.drop_table('schedule_periods')
    op.drop_table('schedule_scaled_services')
    op.drop_table('schedule_pauses')
