"""ssh access

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 21:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ssh_access',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('sandbox_id', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['orgs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ssh_access', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ssh_access_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ssh_access_sandbox_id'), ['sandbox_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ssh_access', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ssh_access_sandbox_id'))
        batch_op.drop_index(batch_op.f('ix_ssh_access_org_id'))
    op.drop_table('ssh_access')
