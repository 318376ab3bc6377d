"""sandbox state reason, snapshot inodes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 23:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # why a sandbox is in its state when no request put it there (failed, a transition that timed out)
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state_reason', sa.String(length=500), nullable=True))
    # the inodes a snapshot's copy uses (until now only in its manifest.json)
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('inodes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_column('inodes')
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.drop_column('state_reason')
