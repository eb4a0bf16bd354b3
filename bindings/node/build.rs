//! Links the Node addon the way N-API addons must (undefined napi_* symbols resolved by node at load time).
fn main() {
    napi_build::setup();
}
