"""cluster nodes, the node of each sandbox

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 03:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('nodes',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.String(length=500), nullable=True),
    sa.Column('vcpu_budget', sa.Integer(), nullable=False),
    sa.Column('memory_mib_budget', sa.Integer(), nullable=False),
    sa.Column('vcpu_used', sa.Integer(), nullable=False),
    sa.Column('memory_mib_used', sa.Integer(), nullable=False),
    sa.Column('templates', sa.JSON(), nullable=False),
    sa.Column('pools', sa.JSON(), nullable=False),
    sa.Column('health', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nodes_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_nodes_heartbeat_at'), ['heartbeat_at'], unique=False)
    # single-host rows keep NULL: they belong to whichever host uses the SQLite file
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('node_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_sandboxes_node_id'), ['node_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sandboxes_node_id'))
        batch_op.drop_column('node_id')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nodes_heartbeat_at'))
        batch_op.drop_index(batch_op.f('ix_nodes_state'))
    op.drop_table('nodes')
