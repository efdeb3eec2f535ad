using Microsoft.Extensions.Time.Testing;
using PortAzure.Diagnostics;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Diagnostics;

public class LogThrottleTests
{
    [Fact]
    public void Take_RepeatedWithinAndAfterTheInterval_OneLinePerIntervalCountingTheCallsHeldBack()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var throttle = new LogThrottle(clock, TimeSpan.FromSeconds(10));

        var taken = new List<long> { throttle.Take("signature_invalid") };
        for (var i = 0; i < 4; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(2));
            taken.Add(throttle.Take("signature_invalid"));
        }
        clock.Advance(TimeSpan.FromSeconds(3));
        taken.Add(throttle.Take("signature_invalid"));

        Assert.Equal([1, 0, 0, 0, 0, 5], taken);
    }

    [Fact]
    public void Take_WallClockSteppedBackAnHour_LetsTheNextLineThroughAfterOneInterval()
    {
        var clock = new SteppedClock();
        var throttle = new LogThrottle(clock, TimeSpan.FromSeconds(10));
        Assert.Equal(1, throttle.Take("signature_invalid"));

        clock.StepBack(TimeSpan.FromHours(1));

        // Not silent for the hour: the window set before the step is not waited out (nothing was held back).
        Assert.Equal(1, throttle.Take("signature_invalid"));
        Assert.Equal(0, throttle.Take("signature_invalid"));
    }

    [Fact]
    public void Take_AnotherKeyWithinTheInterval_HasItsOwnWindow()
    {
        var throttle = new LogThrottle(new FakeTimeProvider(DateTimeOffset.UtcNow), TimeSpan.FromSeconds(10));

        Assert.Equal(1, throttle.Take("signature_invalid"));
        Assert.Equal(1, throttle.Take("unknown_target"));
        Assert.Equal(0, throttle.Take("signature_invalid"));
    }
}
