"""sandbox move id: the attempt under way of handing a paused sandbox to another node

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 21:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: no move is under way for any sandbox that exists before this revision
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('move_id', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.drop_column('move_id')
