"""audit entries by job: the sweeper looks up each finished job's outcome entry

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_audit_job', 'audit_entries', ['job_id'])


def downgrade() -> None:
    op.drop_index('ix_audit_job', table_name='audit_entries')
