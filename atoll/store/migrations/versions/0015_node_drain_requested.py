"""node drain requested: the operator's drain kept apart from the node's state

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 21:55:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a draining node marked down came back up before: the drain now outlives the state
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('drain_requested', sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute("UPDATE nodes SET drain_requested = (state = 'draining')")


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('drain_requested')
