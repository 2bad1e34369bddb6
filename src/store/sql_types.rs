//! How the domain's instants and ids are stored: as the integer inside, on every
//! driver the store uses (`Any` for the pool, SQLite's own for the engine's
//! connection), so statements bind them and rows decode into them directly.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use crate::domain::{
    ArticleId, DeliveryId, EditionId, FeedId, SendId, SignupId, SponsorId, SubscriberId, Timestamp,
};

/// Maps each type to and from its `i64`.
macro_rules! stored_as_i64 {
    ($($t:ty: $from:path, $get:path;)*) => {$(
        impl<DB: Database> Type<DB> for $t
        where
            i64: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <i64 as Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <i64 as Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $t
        where
            i64: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer,
            ) -> Result<IsNull, BoxDynError> {
                <i64 as Encode<'q, DB>>::encode_by_ref(&$get(*self), buf)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $t
        where
            i64: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok($from(<i64 as Decode<'r, DB>>::decode(value)?))
            }
        }
    )*};
}

stored_as_i64! {
    Timestamp: Timestamp::from_unix, Timestamp::unix;
    DeliveryId: DeliveryId::new, DeliveryId::get;
    SubscriberId: SubscriberId::new, SubscriberId::get;
    ArticleId: ArticleId::new, ArticleId::get;
    EditionId: EditionId::new, EditionId::get;
    FeedId: FeedId::new, FeedId::get;
    SignupId: SignupId::new, SignupId::get;
    SendId: SendId::new, SendId::get;
    SponsorId: SponsorId::new, SponsorId::get;
}
