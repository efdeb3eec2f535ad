using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Tests.Redis;

public class DeliveryEntryTests
{
    private static DeliveryEntry Entry(int replays = 0) => new("d_1", "contoso", "deploy", "{}"u8.ToArray(), "key", "run-1",
        DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000), null, null, replays);

    private static DeliveryEntry? RoundTrip(NameValueEntry[] fields) =>
        DeliveryEntry.FromFields(fields.Select(f => new KeyValuePair<RedisValue, RedisValue>(f.Name, f.Value)));

    [Fact]
    public void ToStreamFields_NeverReplayed_HasNoReplaysField()
    {
        // The Ingress's entries: the field is the replay script's, and the record's.
        Assert.DoesNotContain(Entry().ToStreamFields(), f => f.Name == DeliveryEntry.Fields.Replays);
    }

    [Fact]
    public void FromFields_ReplayedEntry_KeepsItsReplayCount()
    {
        Assert.Equal(2, RoundTrip(Entry(replays: 2).ToStreamFields())!.Replays);
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("-1")]
    [InlineData("1.5")]
    public void FromFields_ReplayCountDamaged_ReadsNoneAndTheEntryStands(string damaged)
    {
        // Shown only on the attempts' spans: not a reason to drop a run as malformed.
        var entry = RoundTrip([.. Entry().ToStreamFields(), new(DeliveryEntry.Fields.Replays, damaged)]);

        Assert.NotNull(entry);
        Assert.Equal(0, entry.Replays);
    }
}
