"""presigned URLs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('presigned_urls',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('sandbox_id', sa.String(length=64), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['orgs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sandbox_id'], ['sandboxes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('presigned_urls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_presigned_urls_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_presigned_urls_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_presigned_urls_sandbox_id'), ['sandbox_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('presigned_urls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_presigned_urls_sandbox_id'))
        batch_op.drop_index(batch_op.f('ix_presigned_urls_org_id'))
        batch_op.drop_index(batch_op.f('ix_presigned_urls_expires_at'))

    op.drop_table('presigned_urls')
