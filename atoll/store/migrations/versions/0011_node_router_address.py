"""node router address: where a node's sandbox router listens, for the API replicas' routers

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 17:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: a node registered before records it at its next heartbeat
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('router_address', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('router_address')
