"""audit entries carry the reason the person gave (covered by the hash when set)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows get '': an empty reason is left out of the hash input (audit.chain), so their
    # hashes, computed before this column existed, still verify.
    op.add_column('audit_entries', sa.Column('reason', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('audit_entries') as batch:
        batch.drop_column('reason')
