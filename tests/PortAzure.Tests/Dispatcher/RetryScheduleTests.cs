using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The retry schedule as the running Dispatcher keeps it, on a clock the test moves.</summary>
public class RetryScheduleTests
{
    [Fact]
    public async Task TransientFailure_FakeClock_RetriesOnlyWhenTheBackoffHasPassedOnThatClock()
    {
        await using var relay = await Relay.StartAsync(config =>
        {
            config["Dispatcher:Retry:InitialDelaySeconds"] = "30";
            config["Dispatcher:Retry:MaxDelaySeconds"] = "600";
            config["Dispatcher:Retry:JitterFraction"] = "0";
        }, dispatchers: 0);
        // The fake clock also drives the worker's back-off after a Redis error; none is expected against
        // the local redis-server, and one would show as a timeout below, not as a wrong result.
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, deliveryId) is not null,
            TimeSpan.FromSeconds(30), "the failed attempt is scheduled for a retry");

        // Due 30 s after the failure on the Dispatcher's clock, which has not moved.
        var due = await relay.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, deliveryId);
        Assert.Equal(clock.GetUtcNow().AddSeconds(30).ToUnixTimeMilliseconds(), due);

        // Real time passes (many 0.2 s polls) and the clock moves to 1 ms short of the due time: no retry.
        clock.Advance(TimeSpan.FromSeconds(30) - TimeSpan.FromMilliseconds(1));
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());

        clock.Advance(TimeSpan.FromMilliseconds(1));
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(30), "the retry is delivered once the clock reaches the due time");
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
    }
}
