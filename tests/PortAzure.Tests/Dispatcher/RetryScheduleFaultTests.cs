using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

/// <summary>
/// The retry schedule's calls failing as a dying connection fails them (<see cref="FaultyRedis"/>): the claim of the due
/// retry and the load of its record. Azure answers the first POST 503, so that the run goes through the schedule.
/// </summary>
public class RetryScheduleFaultTests
{
    private const string Claim = "claim";
    private const string Load = "load";

    [Theory]
    [InlineData(ScriptFault.NotRun, Claim)]
    [InlineData(ScriptFault.ReplyLost, Claim)]
    [InlineData(ScriptFault.ReplyLostUnclassified, Claim)]
    [InlineData(ScriptFault.NotRun, Load)]
    [InlineData(ScriptFault.ReplyLost, Load)]
    [InlineData(ScriptFault.NotRunUnclassified, Load)]
    public async Task DueRetry_ClaimOrLoadFails_IsPostedAtOnceAndNotCountedAsACrash(ScriptFault fault, string step)
    {
        // The default lease (82.5 s): a claim left in place would hold the retry back that long, and its next claim would
        // count as a crashed attempt (poison sooner).
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        var failed = 0;
        var dispatcher = await relay.AddDispatcherAsync(configure: null, services => FaultyRedis.FailCalls(services, call =>
        {
            var chosen = step switch
            {
                // The claim that takes the due retry: the schedule holds one due when it is sent (asked on the test's own
                // connection; it only falls due, so that claim is the one that takes it).
                Claim => call.Script is { } script && script.Contains("ZRANGEBYSCORE", StringComparison.Ordinal) && call.Key == RedisKeys.RetrySchedule
                    && relay.Db.SortedSetRangeByScore(RedisKeys.RetrySchedule, double.NegativeInfinity, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()).Length > 0,
                // Only the worker reads a whole record: the load of a claimed retry.
                _ => call.Method == nameof(IDatabase.HashGetAllAsync) && call.Key!.StartsWith(RedisKeys.Delivery(""), StringComparison.Ordinal),
            };
            return chosen && Interlocked.Exchange(ref failed, 1) == 0 ? fault : ScriptFault.None;
        }));
        var runId = TestRuns.NewRunId();

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay, runId);

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered
                && (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201)
                && await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
                && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0
                && await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule) == 0
                && await relay.Db.HashLengthAsync(RedisKeys.RetryClaims) == 0
                && await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0,
            TimeSpan.FromSeconds(15), "the retry delivered and reported well before the lease (82.5 s), nothing left queued, scheduled or claimed");
        Assert.Equal(1, Volatile.Read(ref failed));
        // The 503 and the retry's 200: posted twice, as Azure's answers say.
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
        // No claim counted: the retry's first claim was undone, not taken as a crashed one.
        Assert.True((await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Claims)) is var claims && (claims.IsNull || (long)claims == 0),
            $"claims {claims}");
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.StartsWith("Err", StringComparison.Ordinal));
    }
}
