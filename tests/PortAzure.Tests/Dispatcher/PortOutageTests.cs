using Microsoft.Extensions.Time.Testing;
using PortAzure.Dispatcher.PortReporting;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

public class PortOutageTests
{
    private readonly FakeTimeProvider _clock = new(DateTimeOffset.UtcNow);

    [Fact]
    public void Failed_EveryTwoMinutesForFiveMinutes_AnnouncedOnceWithItsStart()
    {
        var outage = new PortOutage(_clock);
        var start = _clock.GetUtcNow();
        var announced = new List<DateTimeOffset?>();

        for (var i = 0; i < 6; i++)
        {
            announced.Add(outage.Failed());
            _clock.Advance(TimeSpan.FromMinutes(2));
        }

        // At 0, 2, 4 min: not yet; at 6 min: announced, from its start; at 8 and 10 min: not again.
        Assert.Equal([null, null, null, start, null, null], announced);
    }

    [Fact]
    public void Since_OnlyOnceFiveMinutesOldAndWhileFailuresGoOn()
    {
        var outage = new PortOutage(_clock);
        var start = _clock.GetUtcNow();
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(2));
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(2));
        Assert.Null(outage.Since);

        _clock.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(start, outage.Since);

        // No failure for longer than the gap: nothing is waiting any more, though Port took no report.
        _clock.Advance(TimeSpan.FromMinutes(2));
        Assert.Null(outage.Since);
    }

    [Fact]
    public void Failed_TriesALongRetryAfterApart_AddUpToOneOutage()
    {
        // A Port that answers 429 with Retry-After: 300 to every try, in a quiet period: tries 5 min apart, past the 3-min gap.
        var outage = new PortOutage(_clock);
        var start = _clock.GetUtcNow();
        var wait = TimeSpan.FromMinutes(5) + TimeSpan.FromSeconds(1);
        Assert.Null(outage.Failed(wait));
        _clock.Advance(wait);
        Assert.Equal(start, outage.Failed(wait));

        // Between two such tries the outage stands, and it ends a minute past the promised next try.
        _clock.Advance(TimeSpan.FromMinutes(4));
        Assert.Equal(start, outage.Since);
        _clock.Advance(TimeSpan.FromMinutes(2.1));
        Assert.Null(outage.Since);
    }

    [Fact]
    public void Failed_AfterAGapLongerThanThreeMinutes_StartsANewOutage()
    {
        var outage = new PortOutage(_clock);
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(4));
        var restart = _clock.GetUtcNow();
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(2));
        Assert.Null(outage.Failed());

        _clock.Advance(TimeSpan.FromMinutes(3));

        Assert.Equal(restart, outage.Failed());
    }

    [Fact]
    public void Failed_ClockSteppedBackDuringAnOutage_StillAnnouncedAfterFiveMinutes()
    {
        // On the wall clock the start lay an hour ahead after the step: no Warning, /health Healthy, for the whole hour.
        var clock = new SteppedClock();
        var outage = new PortOutage(clock);
        var start = clock.GetUtcNow();
        outage.Failed();
        clock.StepBack(TimeSpan.FromHours(1));
        var announced = new List<DateTimeOffset?>();

        for (var i = 0; i < 3; i++)
        {
            clock.Advance(TimeSpan.FromMinutes(2));
            announced.Add(outage.Failed());
        }

        Assert.Equal([null, null, start], announced);
        Assert.Equal(start, outage.Since);
        Assert.Equal(TimeSpan.FromMinutes(6), outage.Ended());
    }

    [Fact]
    public void Ended_OnlyForAnAnnouncedOutageStillUnderWay()
    {
        var outage = new PortOutage(_clock);
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(1));
        Assert.Null(outage.Ended());

        var start = _clock.GetUtcNow();
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(2));
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(2));
        outage.Failed();
        _clock.Advance(TimeSpan.FromMinutes(2));
        Assert.NotNull(outage.Failed());
        _clock.Advance(TimeSpan.FromMinutes(1));

        Assert.Equal(TimeSpan.FromMinutes(7), outage.Ended());
        Assert.Null(outage.Since);
        Assert.Null(outage.Ended());
    }
}
