"""approvals: two-person job approval, time-boxed grants, access requests

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as b:
        b.add_column(sa.Column('reason', sa.Text(), nullable=False, server_default=''))
        b.add_column(sa.Column('approved_by', sa.String(length=320), nullable=True))
        b.add_column(sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column('plan', sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table('grants') as b:
        b.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column('reason', sa.String(length=500), nullable=False, server_default=''))
        b.add_column(sa.Column('expiry_recorded_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('access_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('requester', sa.String(length=320), nullable=False),
    sa.Column('environment', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('duration_seconds', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.String(length=320), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_reason', sa.String(length=500), nullable=False),
    sa.Column('grant_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_access_requests_requester', 'access_requests', ['requester'])
    op.create_index('ix_access_requests_status', 'access_requests', ['status', 'environment'])


def downgrade() -> None:
    op.drop_index('ix_access_requests_status', table_name='access_requests')
    op.drop_index('ix_access_requests_requester', table_name='access_requests')
    op.drop_table('access_requests')
    with op.batch_alter_table('grants') as b:
        b.drop_column('expiry_recorded_at')
        b.drop_column('reason')
        b.drop_column('expires_at')
    with op.batch_alter_table('jobs') as b:
        b.drop_column('plan')
        b.drop_column('approved_at')
        b.drop_column('approved_by')
        b.drop_column('reason')
